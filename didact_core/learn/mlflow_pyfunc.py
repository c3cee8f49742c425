"""didact's detector as an MLflow pyfunc model ("models from code": no pickle).

MLflow copies this file into each logged model; ``mlflow models serve`` (with didact
installed) loads the detector from the model's ``detector`` artifact and answers with
one row per input row: reconstruction error, latent coordinates and the OOD flag
(:func:`didact_core.learn.registry.predict_frame`).  didact never imports this file itself.
"""

import mlflow.pyfunc
import pandas as pd
from mlflow.models import set_model

from didact_core.learn.detector import Detector
from didact_core.learn.registry import predict_frame


class DidactDetectorModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context):
        self.detector = Detector.load(context.artifacts["detector"])

    # type hints: MLflow skips its input validation for a DataFrame hint, and says nothing
    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        return predict_frame(self.detector, pd.DataFrame(model_input))


set_model(DidactDetectorModel())
