"""Video classifiers over stored frame embeddings: models, mixup, training, kNN, metrics."""
