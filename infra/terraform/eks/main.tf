resource "aws_eks_node_group" "gpu" {
  cluster_name    = var.cluster_name
  node_group_name = var.node_group_name
  node_role_arn   = var.node_role_arn
  subnet_ids      = var.subnet_ids

  # EKS-optimised AL2023 AMI with the NVIDIA driver and container toolkit.
  ami_type       = "AL2023_x86_64_NVIDIA"
  capacity_type  = var.capacity_type
  instance_types = var.instance_types
  disk_size      = var.disk_size_gb

  scaling_config {
    min_size     = 0
    desired_size = 0
    max_size     = var.max_size
  }

  update_config {
    max_unavailable = 1
  }

  labels = merge(var.extra_labels, {
    "tlpipe.io/pool"                = "gpu"
    "k8s.amazonaws.com/accelerator" = var.accelerator_label
  })

  # Only pods tolerating this taint (the KFP GPU tasks) land on these nodes.
  taint {
    key    = "nvidia.com/gpu"
    value  = "present"
    effect = "NO_SCHEDULE"
  }

  # EKS tags the backing ASG for cluster-autoscaler auto-discovery; to scale up
  # from zero the autoscaler reads these labels/taints via eks:DescribeNodegroup.
  tags = var.tags

  lifecycle {
    # The cluster autoscaler owns the current size.
    ignore_changes = [scaling_config[0].desired_size]
  }
}
