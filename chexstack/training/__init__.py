"""CheXNet training: config, input pipeline, metrics, class activation maps, TensorBoard, the run itself."""
