"""The closed sets of values a user picks from on the command line: decided here, once.

Standard library only, and no import from slm_hf: the scripts load this file with
`command_line.library_module("slm_hf/choices.py")` to offer these choices in `--help` before torch is imported
(tests/test_entry_points.py checks both). The library validates against the same tuples.
"""

PRECISIONS = ("auto", "no", "fp16", "bf16")  # TrainingConfig.mixed_precision
TRACKERS = ("none", "tensorboard", "wandb")  # TrainingConfig.report_to
EXPORT_TARGETS = ("llama", "gguf", "onnx")  # slm_hf.exporting.export_model
GGUF_TYPES = ("f32", "f16", "q8_0")  # slm_hf.exporting.to_gguf: weight types of a GGUF file (norms stay f32)
# slm_hf.hub.push_to_hub: the model folder as it is (our code, loaded with trust_remote_code), or its Llama export.
PUSH_FORMATS = ("slm", "llama")
