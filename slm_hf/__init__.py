"""slm_hf: a small story-telling language model, trained on TinyStories, native to the Hugging Face stack.

Importing the package registers the model with transformers' Auto classes, so that
``AutoModelForCausalLM.from_pretrained(folder)`` works without ``trust_remote_code`` once ``slm_hf`` is imported,
and marks the classes for remote code, so that every folder ``save_pretrained`` writes carries
``configuration_slm.py`` and ``modeling_slm.py`` and loads anywhere with ``trust_remote_code=True``.
"""

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from .configuration_slm import SLMConfig
from .modeling_slm import SLMForCausalLM, SLMModel, SLMPreTrainedModel

__version__ = "0.1.0"

AutoConfig.register(SLMConfig.model_type, SLMConfig, exist_ok=True)
AutoModel.register(SLMConfig, SLMModel, exist_ok=True)
AutoModelForCausalLM.register(SLMConfig, SLMForCausalLM, exist_ok=True)
SLMConfig.register_for_auto_class()
SLMModel.register_for_auto_class("AutoModel")
SLMForCausalLM.register_for_auto_class("AutoModelForCausalLM")

__all__ = ["SLMConfig", "SLMModel", "SLMForCausalLM", "SLMPreTrainedModel", "__version__"]
