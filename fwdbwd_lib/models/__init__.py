"""Model builders, registered by name in ``fwdbwd_lib.registry.models``."""

from fwdbwd_lib.models import vision  # noqa: F401  (registers mlp, convnet, resnet18)
from fwdbwd_lib.models import speech  # noqa: F401  (registers speech_cnn, speech_rnn, speech_transformer)
from fwdbwd_lib.models import text  # noqa: F401  (registers roberta, text_cnn)
