"""The SLM model's loss: transformers' causal-LM cross-entropy, computed a few hundred rows at a time.

`SLMForCausalLM` sets `causal_lm_loss` as its `loss_function`, so it is the model's own loss wherever the model is
trained or fine-tuned (slm_hf's loop, transformers' Trainer, a user's own loop). This file is copied next to the
weights by ``save_pretrained`` with ``modeling_slm.py`` (remote code): it imports only torch.
"""

import torch
import torch.nn.functional as F


class ChunkedCrossEntropy(torch.autograd.Function):
    """Mean cross-entropy of `logits` (tokens, vocab) against `targets` (tokens,), `ignore_index` rows left out.

    The same value as `F.cross_entropy(logits.float(), targets)` (the usual causal-LM loss), computed in fp32 a few
    hundred rows at a time, so that no fp32 copy of the logits, no log-softmax of them and no zero-filled gradient
    of their size is ever made: the forward pass keeps one log-sum-exp per row; the backward pass writes
    `softmax - one_hot` straight into a gradient of the logits' own dtype. The head's logits are the largest tensor
    a small model makes (tokens x vocabulary): on a CPU this is several times faster than the usual loss.
    """

    @staticmethod
    def forward(ctx, logits, targets, ignore_index: int, num_items: torch.Tensor | None, chunk: int):
        valid = targets != ignore_index
        safe_targets = torch.where(valid, targets, 0)
        log_sum_exp = torch.empty(logits.shape[0], dtype=torch.float32, device=logits.device)
        for start in range(0, logits.shape[0], chunk):
            log_sum_exp[start : start + chunk] = torch.logsumexp(logits[start : start + chunk].float(), dim=-1)
        target_logits = logits.gather(1, safe_targets[:, None]).squeeze(1).float()
        count = valid.sum() if num_items is None else torch.as_tensor(num_items, device=logits.device)
        count = count.clamp(min=1).float()
        ctx.save_for_backward(logits, safe_targets, valid, log_sum_exp, count)
        ctx.chunk = chunk
        return ((log_sum_exp - target_logits) * valid).sum() / count

    @staticmethod
    def backward(ctx, grad_output):
        logits, targets, valid, log_sum_exp, count = ctx.saved_tensors
        row_scale = valid * (grad_output / count)  # 0 on ignored rows
        grad = torch.empty_like(logits)
        for start in range(0, logits.shape[0], ctx.chunk):
            rows = slice(start, start + ctx.chunk)
            probs = (logits[rows].float() - log_sum_exp[rows, None]).exp_()  # out of place: fp32 logits stay
            probs[torch.arange(probs.shape[0], device=probs.device), targets[rows]] -= 1
            grad[rows] = probs.mul_(row_scale[rows, None])
        return grad, None, None, None, None


def causal_lm_loss(
    logits: torch.Tensor,
    labels: torch.Tensor | None = None,
    vocab_size: int | None = None,
    num_items_in_batch: torch.Tensor | None = None,
    ignore_index: int = -100,
    shift_labels: torch.Tensor | None = None,
    chunk: int | None = None,
    **kwargs,
) -> torch.Tensor:
    """transformers' causal-LM loss (`ForCausalLMLoss`: the same arguments; `labels` are shifted by one, `shift_labels`
    are not), computed by `ChunkedCrossEntropy`, `chunk` rows at a time.

    By default 256 rows on a CPU (they stay in its caches) and 64M logits elsewhere: a GPU wants few, large kernels,
    and its kernel launches, not its memory, are what many small chunks would cost. Under `torch.compile` (when a
    caller compiles this function) it is plain `F.cross_entropy` of the fp32 logits instead: the
    compiler fuses the cast, the log-softmax and its gradient into one pass over the logits each way.
    """
    if shift_labels is None:
        shift_labels = F.pad(labels, (0, 1), value=ignore_index)[..., 1:]
    logits, targets = logits.reshape(-1, logits.shape[-1]), shift_labels.reshape(-1).to(logits.device)
    if torch.compiler.is_compiling():
        count = (targets != ignore_index).sum() if num_items_in_batch is None else num_items_in_batch
        loss = F.cross_entropy(logits.float(), targets, ignore_index=ignore_index, reduction="sum")
        return loss / torch.as_tensor(count, device=loss.device).clamp(min=1)
    if chunk is None:
        chunk = 256 if logits.device.type == "cpu" else max(256, 2**26 // logits.shape[-1])
    return ChunkedCrossEntropy.apply(logits, targets, ignore_index, num_items_in_batch, chunk)


__all__ = ["causal_lm_loss"]
