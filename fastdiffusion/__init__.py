"""fastdiffusion: diffusion models that are cheap to train and fast to sample.

    import fastdiffusion as fd
    model = fd.load_model("runs/demo")                       # a run dir, checkpoint dir or .safetensors file
    x = fd.sample(model, torch.randn(16, *model.data_shape), sampler="heun", nfe=35)
    fd.accelerate(model.cuda())                              # GPU fast path: bf16, channels_last, compile if it pays
"""

from .errors import UserError
from .fastpath import accelerate
from .guidance import Guided
from .models import OneStepGenerator, ProcessModel, load_model, save_model, wrap_eps, wrap_v
from .processes import make_process
from .samplers.learned import learn_schedule
from .samplers.tuning import tune_schedule
from .sampling import generate, sample
from .seeds import SeededNoise

__version__ = "0.1.0"

__all__ = ["Guided", "OneStepGenerator", "ProcessModel", "SeededNoise", "UserError", "accelerate", "generate",
           "learn_schedule", "load_model", "make_process", "sample", "save_model", "tune_schedule", "wrap_eps",
           "wrap_v"]
