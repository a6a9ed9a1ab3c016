output "node_group_arn" {
  description = "ARN of the GPU node group."
  value       = aws_eks_node_group.gpu.arn
}

output "node_group_id" {
  description = "ID (cluster_name:node_group_name) of the GPU node group."
  value       = aws_eks_node_group.gpu.id
}

output "autoscaling_group_names" {
  description = "Auto Scaling groups backing the node group."
  value       = [for asg in flatten(aws_eks_node_group.gpu.resources[*].autoscaling_groups) : asg.name]
}

output "node_selector" {
  description = "nodeSelector for GPU pods (they also need a toleration for nvidia.com/gpu=present:NoSchedule)."
  value       = { "tlpipe.io/pool" = "gpu" }
}
