"""Machine learning: models, the compute engine, compression, serving."""
