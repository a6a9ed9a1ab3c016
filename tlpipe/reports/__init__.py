"""Reports: scores, statistics, plots, Jinja2 HTML templates, the promotion review."""
