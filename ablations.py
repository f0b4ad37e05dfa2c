"""
The paper's ablations of the critic loss (Sec. 5.4, Tables 4-5), and one of ours: what
distill_mtp.py trains when one of these flags is given (make ablations; docs/ablations.md has
what each gave).

    --supervision ground_truth   the data's tokens as the block's targets (the paper's offline MTP)
    --teacher_readout soft       KL to the teacher's distribution instead of cross-entropy to its argmax
    --bidirectional              the masks of a block see each other both ways
    --prefix_target teacher      the prefix loss as KL to the teacher's next-token distribution (ours)

Each is distill_mtp.distill_loss with one of its pieces swapped; the pieces are distill_mtp's.
"""
import torch
import torch.nn.functional as F

from distill_mtp import critic, prefix_cross_entropy, rollout_stats, student_blocks


def ablation_loss(supervision="critic", teacher_readout="hard", prefix_target="data", bidirectional=False):
    """distill_mtp.distill_loss with the ablations switched, a loss of the same signature:
    `supervision="ground_truth"` the data's tokens as the block's targets (the paper's offline
    MTP); `teacher_readout="soft"` KL to the teacher's distribution instead of its argmax;
    `bidirectional` masks that see their whole block (the critic still reads causally);
    `prefix_target="teacher"` the prefix loss as KL to the teacher at the real tokens. With none
    switched it is distill_loss."""
    def loss_fn(student, teacher, x, y, k, points, mask_ids, n_vocab, prefix_loss=0.0):
        N = x.size(1)
        logits, blocks = student_blocks(student, x, k, points, mask_ids, n_vocab, bidirectional)  # (B, M, k, n_vocab)
        rollout = blocks.argmax(-1)
        if supervision == "critic":
            t_all, t_blocks = critic(teacher, x, rollout, points, n_vocab)  # (B, L, V), (B, M, k, n_vocab)
            targets = t_blocks.argmax(-1)
        else:  # ground truth: token j of block m is x_{i_m + j} = y_{i_m + j - 1}
            targets = y[:, points[:, None].to(x.device) + torch.arange(k, device=x.device)]  # (B, M, k)
        if supervision == "critic" and teacher_readout == "soft":
            loss = kl(F.log_softmax(blocks.float(), -1), F.log_softmax(t_blocks, -1))
        else:
            loss = F.cross_entropy(blocks.flatten(0, 2).float(), targets.flatten())
        if prefix_loss > 0 and prefix_target == "data":
            loss = loss + prefix_loss * prefix_cross_entropy(logits, y)
        elif prefix_loss > 0:  # the teacher's own next-token distribution at the real tokens
            with torch.no_grad():  # the ground truth sees no mask, so the critic's pass already holds it
                t_real = t_all[:, :N] if supervision == "critic" else teacher(x)[0]  # (B, N, V)
            loss = loss + prefix_loss * kl(F.log_softmax(logits[:, :N, :n_vocab].float(), -1),
                                           F.log_softmax(t_real[..., :n_vocab].float(), -1))
        return loss, rollout_stats(rollout, targets, blocks)
    return loss_fn


def kl(log_p_student, log_p_teacher):
    """KL(teacher || student) per position, summed over the vocabulary and averaged over positions."""
    return F.kl_div(log_p_student, log_p_teacher, log_target=True, reduction="none").sum(-1).mean()
