variable "region" {
  type        = string
  description = "AWS region of the existing EKS cluster."
}

variable "cluster_name" {
  type        = string
  description = "Name of the existing EKS cluster the GPU node group is added to."
}

variable "node_group_name" {
  type        = string
  description = "Name of the GPU managed node group."
  default     = "tlpipe-gpu"
}

variable "node_role_arn" {
  type        = string
  description = "IAM role ARN for the nodes (AmazonEKSWorkerNodePolicy, AmazonEC2ContainerRegistryReadOnly, AmazonEKS_CNI_Policy)."
}

variable "subnet_ids" {
  type        = list(string)
  description = "Private subnets for the GPU nodes."

  validation {
    condition     = length(var.subnet_ids) > 0
    error_message = "At least one subnet is required."
  }
}

variable "instance_types" {
  type        = list(string)
  description = "GPU instance types, all with the same accelerator (e.g. g4dn.xlarge = NVIDIA T4)."
  default     = ["g4dn.xlarge"]
}

variable "accelerator_label" {
  type        = string
  description = "Value of the k8s.amazonaws.com/accelerator node label (the GPU model of instance_types)."
  default     = "nvidia-tesla-t4"
}

variable "capacity_type" {
  type        = string
  description = "ON_DEMAND or SPOT."
  default     = "ON_DEMAND"

  validation {
    condition     = contains(["ON_DEMAND", "SPOT"], var.capacity_type)
    error_message = "capacity_type must be ON_DEMAND or SPOT."
  }
}

variable "max_size" {
  type        = number
  description = "Autoscaler upper bound of GPU nodes (the lower bound is 0)."
  default     = 4

  validation {
    condition     = var.max_size >= 1
    error_message = "max_size must be at least 1."
  }
}

variable "disk_size_gb" {
  type        = number
  description = "Root volume size per node in GiB (CUDA images are large)."
  default     = 100
}

variable "extra_labels" {
  type        = map(string)
  description = "Additional Kubernetes node labels."
  default     = {}
}

variable "tags" {
  type        = map(string)
  description = "AWS tags for the node group."
  default     = {}
}
