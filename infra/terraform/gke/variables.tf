variable "project_id" {
  type        = string
  description = "GCP project that owns the GKE cluster."
}

variable "location" {
  type        = string
  description = "Region or zone of the existing GKE cluster (e.g. europe-west4)."
}

variable "cluster_name" {
  type        = string
  description = "Name of the existing GKE cluster the GPU pool is added to."
}

variable "node_pool_name" {
  type        = string
  description = "Name of the GPU node pool."
  default     = "tlpipe-gpu"
}

variable "node_locations" {
  type        = list(string)
  description = "Zones for the pool's nodes; pick zones that offer accelerator_type. Empty = the cluster's zones."
  default     = []
}

variable "machine_type" {
  type        = string
  description = "Compute Engine machine type for GPU nodes (must accept the accelerator)."
  default     = "n1-standard-8"
}

variable "accelerator_type" {
  type        = string
  description = "GPU type attached to each node (GKE sets cloud.google.com/gke-accelerator to this)."
  default     = "nvidia-tesla-t4"
}

variable "accelerator_count" {
  type        = number
  description = "GPUs per node."
  default     = 1

  validation {
    condition     = var.accelerator_count >= 1
    error_message = "accelerator_count must be at least 1."
  }
}

variable "gpu_driver_version" {
  type        = string
  description = "GKE-managed NVIDIA driver version: DEFAULT, LATEST or INSTALLATION_DISABLED."
  default     = "DEFAULT"

  validation {
    condition     = contains(["DEFAULT", "LATEST", "INSTALLATION_DISABLED"], var.gpu_driver_version)
    error_message = "gpu_driver_version must be DEFAULT, LATEST or INSTALLATION_DISABLED."
  }
}

variable "max_node_count" {
  type        = number
  description = "Autoscaler upper bound of GPU nodes per zone (the lower bound is 0)."
  default     = 4

  validation {
    condition     = var.max_node_count >= 1
    error_message = "max_node_count must be at least 1."
  }
}

variable "spot" {
  type        = bool
  description = "Use Spot VMs for the GPU nodes (cheaper, preemptible)."
  default     = false
}

variable "disk_size_gb" {
  type        = number
  description = "Boot disk size per node in GB (CUDA images are large)."
  default     = 100
}

variable "node_service_account" {
  type        = string
  description = "Email of the least-privilege service account the nodes run as."
}

variable "extra_labels" {
  type        = map(string)
  description = "Additional Kubernetes node labels."
  default     = {}
}
