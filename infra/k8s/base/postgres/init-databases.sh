#!/bin/bash
# Runs once, on an empty data directory (docker-entrypoint-initdb.d).
# Creates the "mlflow" and "optuna" databases, each owned by its own login role
# whose name and password come from the mlflow-db / optuna-db Secrets.
set -euo pipefail

create_db() {
  local db="$1" user="$2" password="$3"
  psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres \
    --set=db="$db" --set=db_user="$user" --set=db_password="$password" <<'SQL'
CREATE ROLE :"db_user" LOGIN PASSWORD :'db_password';
CREATE DATABASE :"db" OWNER :"db_user";
REVOKE ALL ON DATABASE :"db" FROM PUBLIC;
SQL
}

create_db mlflow "$MLFLOW_DB_USER" "$MLFLOW_DB_PASSWORD"
create_db optuna "$OPTUNA_DB_USER" "$OPTUNA_DB_PASSWORD"
