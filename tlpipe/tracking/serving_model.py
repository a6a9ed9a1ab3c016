"""The file MLflow loads the registered model from ("models from code"): no pickled Python object.

`log_image_model` passes this file's path as `python_model`; MLflow runs it when the model is loaded (with the
tlpipe package shipped as `code_paths`), and `set_model` hands it the classifier.
"""

from mlflow.models import set_model

from tlpipe.tracking.serving import ImageClassifier

set_model(ImageClassifier())
