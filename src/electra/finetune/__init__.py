"""Fine-tuning, evaluation and prediction: classification, regression, NER and extractive QA."""
