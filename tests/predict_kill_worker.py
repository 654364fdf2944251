"""Run by tests/test_predict_scale.py in a subprocess that is killed with SIGKILL mid-run:
``python predict_kill_worker.py FOLDER OUT`` predicts slowly (a stub detector that sleeps
per batch) with batches of 2 images."""

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from bloodlib.inference.folder import collect_inputs  # noqa: E402
from bloodlib.inference.batch import predict_files  # noqa: E402
from stub_predictors import StubDetector  # noqa: E402


class SlowDetector(StubDetector):
    def predict_batch(self, images, **kw):
        time.sleep(0.3)
        return [self.predict(im, **kw) for im in images]


if __name__ == "__main__":
    files, _ = collect_inputs([sys.argv[1]])
    resume = len(sys.argv) > 3
    predict_files(files, SlowDetector(), Path(sys.argv[2]), progress=False, overlays=False,
                  batch_size=2, resume=resume)
