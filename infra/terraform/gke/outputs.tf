output "node_pool_id" {
  description = "Fully qualified ID of the GPU node pool."
  value       = google_container_node_pool.gpu.id
}

output "node_pool_name" {
  description = "Name of the GPU node pool."
  value       = google_container_node_pool.gpu.name
}

output "instance_group_urls" {
  description = "Managed instance groups backing the pool."
  value       = google_container_node_pool.gpu.managed_instance_group_urls
}

output "node_selector" {
  description = "nodeSelector for GPU pods (they also need a toleration for nvidia.com/gpu=present:NoSchedule)."
  value       = { "tlpipe.io/pool" = "gpu" }
}
