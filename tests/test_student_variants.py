"""The student's switches beyond the paper's main setting: one mask token per offset, the
teacher as the prefix loss's target, and the experiments beside the method (experiments.py):
the mask-gated adapter, and ConfAdapt's run gate and fitted temperatures."""
from functools import partial

import pytest
import torch
import torch.nn.functional as F

from conftest import MASK, MASKS, N_VOCAB, TINY
from decode import generate_mtp, generate_ntp, generate_self_speculative
from distill_mtp import distill_loss, fit_temperatures, prediction_points
from common import emit_only
from ablations import ablation_loss
from experiments import add_mask_adapter
from gates import calibrated_confidence, run_confidence
from test_distill import critic_loss_one_block_at_a_time
from model import GPT, GPTConfig, add_mask_token, mask_tokens, mtp_layout


@pytest.fixture
def teacher():
    torch.manual_seed(0)
    return GPT(TINY).eval()


def copy_of(teacher, n_masks=1, adapter_rank=0, adapter_scale=0.0):
    """A student as distill_mtp builds one: the teacher's weights plus n_masks mask tokens (and
    with adapter_rank, the mask-gated adapter, its weights drawn at adapter_scale: at 0, B = 0
    and the adapter changes nothing yet)."""
    student = GPT(TINY).eval()
    student.load_state_dict(teacher.state_dict())
    add_mask_token(student, MASK, torch.Generator().manual_seed(0), count=n_masks)
    if not adapter_rank:
        return student
    add_mask_adapter(student, adapter_rank, MASK)
    with torch.no_grad():
        for name, p in student.named_parameters():
            if "lora_" in name and adapter_scale:
                p.copy_(adapter_scale * torch.randn_like(p))
    return student


def test_per_offset_masks_take_consecutive_free_slots():
    assert mask_tokens(MASK, 3) == [MASK] * 3
    assert mask_tokens(MASK, 3, per_offset=True) == [MASK, MASK + 1, MASK + 2]
    assert mask_tokens(MASK, 0, per_offset=True) == []


def test_each_offset_gets_its_own_typical_embedding(teacher):
    student = copy_of(teacher, n_masks=3)
    wte_t, wte_s = teacher.transformer.wte.weight, student.transformer.wte.weight
    assert torch.equal(wte_s[:MASK], wte_t[:MASK])
    rows = wte_s[MASK:MASK + 3]
    assert not torch.equal(rows[0], rows[1]) and not torch.equal(rows[1], rows[2])
    assert ((rows - wte_t[:MASK].mean(0)).abs().mean(1) < 3 * wte_t[:MASK].std(0).mean()).all()
    with pytest.raises(ValueError, match="no free vocabulary slot"):
        add_mask_token(student, TINY.vocab_size - 2, count=3)


def test_the_critic_loss_feeds_mask_j_its_own_id(teacher):
    """distill_loss with one mask per offset == the loss recomputed block by block with mask j
    fed as id MASK + j - 1, and != the same with one id for every mask."""
    student = copy_of(teacher, n_masks=3)
    N, k = 32, 4
    x, y = torch.randint(0, N_VOCAB, (2, N)), torch.randint(0, N_VOCAB, (2, N))
    points = prediction_points(N, k, n_points=3, offset=2)
    per_offset = mask_tokens(MASK, k - 1, per_offset=True)
    loss, _ = distill_loss(student, teacher, x, y, k, points, per_offset, N_VOCAB)
    expected = critic_loss_one_block_at_a_time(student, teacher, x, k, points, per_offset)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    one_id = critic_loss_one_block_at_a_time(student, teacher, x, k, points, MASKS)
    assert one_id.item() != pytest.approx(loss.item(), rel=1e-5)  # the ids do reach the student


@pytest.mark.parametrize("supervision", ["critic", "ground_truth"])
def test_the_teacher_prefix_loss_is_the_kl_to_the_teachers_next_token_distribution(teacher, supervision):
    student = copy_of(teacher)
    with torch.no_grad():  # make the student differ from the teacher, or the KL is 0
        for p in student.parameters():
            p.add_(0.05 * torch.randn_like(p))
    N, k, weight = 32, 3, 2.0
    x, y = torch.randint(0, N_VOCAB, (2, N)), torch.randint(0, N_VOCAB, (2, N))
    points = prediction_points(N, k, n_points=4, offset=1)
    base, _ = ablation_loss(supervision=supervision)(student, teacher, x, y, k, points, MASKS, N_VOCAB)
    with_kl, _ = ablation_loss(supervision=supervision, prefix_target="teacher")(student, teacher, x, y, k, points,
                                                                                MASKS, N_VOCAB, prefix_loss=weight)
    t_logp = F.log_softmax(teacher(x)[0][..., :N_VOCAB], -1)  # (2, N, V): plain NTP on the ground truth
    s_logp = F.log_softmax(student(x)[0][..., :N_VOCAB], -1)
    kl = (t_logp.exp() * (t_logp - s_logp)).sum(-1).mean()
    assert kl > 1e-3
    assert (with_kl - base).item() == pytest.approx(weight * kl.item(), rel=1e-4)


def test_the_adapter_changes_the_masks_and_nothing_else(teacher):
    """Real tokens run through the teacher's weights bit for bit, whatever the adapter holds."""
    student = copy_of(teacher, adapter_rank=4, adapter_scale=1.0)
    x = torch.randint(0, N_VOCAB, (2, 32))
    assert torch.equal(student(x)[0][..., :N_VOCAB], teacher(x)[0][..., :N_VOCAB])  # (the mask's row is new)
    points = prediction_points(32, 4, n_points=4, offset=1)
    pos, mask, read = mtp_layout(32, 4, points)
    idx = torch.cat([x, torch.full((2, len(points) * 3), MASK)], 1)
    with_adapter = student(idx, pos=pos, attn_mask=mask)[0]
    without = copy_of(teacher)(idx, pos=pos, attn_mask=mask)[0]  # the same student, no adapter
    assert torch.equal(with_adapter[:, :32, :N_VOCAB], teacher(x)[0][..., :N_VOCAB])
    assert not torch.allclose(with_adapter[:, 32:], without[:, 32:])


def test_an_adapter_students_k1_and_self_speculative_output_is_the_teachers(teacher):
    student = copy_of(teacher, adapter_rank=4, adapter_scale=0.1)
    prompt = torch.randint(0, N_VOCAB, (6,)).tolist()
    student, teacher = emit_only(student, N_VOCAB), emit_only(teacher, N_VOCAB)  # as load_for_decoding cuts the logits
    reference = generate_ntp(teacher, prompt, 30, eos_id=-1).tokens
    assert generate_mtp(student, prompt, 30, eos_id=-1, mask_ids=MASKS, k=1).tokens == reference
    assert generate_self_speculative(student, prompt, 30, eos_id=-1, mask_ids=MASKS,
                                     k=4).tokens == reference


def test_distilling_with_the_adapter_trains_only_the_adapter_and_the_mask_rows(tiny_data, tmp_path):
    from conftest import untrained_teacher
    from distill_mtp import load_teacher_and_student
    path = untrained_teacher(tiny_data, tmp_path / "teacher.pt")
    teacher, _, enc, student, mask_id = load_teacher_and_student(path, "cpu", 0, adapter_rank=2)
    before = {n: p.clone() for n, p in student.named_parameters()}
    optimizer = student.configure_optimizers(0.0, 1e-2, (0.9, 0.95), "cpu")
    student.train()
    for step in range(2):
        x = torch.randint(0, enc.n_vocab, (2, 32))
        loss, _ = distill_loss(student, teacher, x, x, 3, prediction_points(32, 3, 4, step), [mask_id] * 2,
                               enc.n_vocab)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    for name, p in student.named_parameters():
        if "lora_" in name:
            assert not torch.equal(p, before[name]), name
        elif name == "transformer.wte.weight":
            assert torch.equal(p[:mask_id], before[name][:mask_id]) and not torch.equal(p[mask_id], before[name][mask_id])
        else:
            assert torch.equal(p, before[name]), name


@pytest.fixture
def student(teacher):
    s = copy_of(teacher)
    with torch.no_grad():  # a confident student: scale up the output so the confidences spread
        s.transformer.ln_f.weight.mul_(40.0)
    return emit_only(s, N_VOCAB)  # as load_for_decoding cuts the logits


def test_the_run_gate_stops_where_the_product_of_confidences_falls_below_tau(student):
    """decode.py --gate run: each pass emits the longest run whose running product of confidences is
    >= tau, recomputed here from the same passes."""
    prompt, k, tau = [5, 6, 7], 4, 0.5
    out = generate_mtp(student, prompt, 24, eos_id=-1, mask_ids=MASKS, k=k, tau=tau,
                       pick=run_confidence)
    seq = list(prompt)
    for size in out.chunks[:-1]:
        logits = student(torch.tensor([seq + [MASK] * (k - 1)]))[0][0, -k:, :N_VOCAB]
        confidence, tokens = torch.softmax(logits, -1).max(-1)
        expected = max(1, int((confidence.cumprod(0) >= tau).long().cumprod(0).sum()))
        each_alone = max(1, int((confidence >= tau).long().cumprod(0).sum()))  # the paper's gate, same pass
        assert size == expected <= each_alone
        seq += tokens[:size].tolist()
    assert seq[len(prompt):] == out.tokens[:len(seq) - len(prompt)]
    assert max(out.chunks) > 1 and min(out.chunks) < k  # the gate did stop some runs, not all
    token_gate = generate_mtp(student, prompt, 24, eos_id=-1, mask_ids=MASKS, k=k, tau=tau)
    assert token_gate.chunks != out.chunks


def test_a_rotary_student_layout_gives_each_block_what_it_would_see_alone():
    torch.manual_seed(0)
    student = add_mask_token(GPT(GPTConfig(**{**TINY.__dict__, "rotary": True})).eval(), MASK)
    N, k = 32, 4
    x = torch.randint(0, N_VOCAB, (1, N))
    points = prediction_points(N, k, n_points=4, offset=3)
    pos, mask, read = mtp_layout(N, k, points)
    logits, _ = student(torch.cat([x, torch.full((1, len(points) * (k - 1)), MASK)], 1), pos=pos, attn_mask=mask)
    for m, i in enumerate(points.tolist()):
        alone, _ = student(torch.cat([x[:, :i + 1], torch.full((1, k - 1), MASK)], 1))
        torch.testing.assert_close(logits[:, read[m]], alone[:, i:], atol=1e-5, rtol=1e-5)


def test_fitted_temperatures_recover_the_temperature_the_targets_were_drawn_at():
    """Targets drawn from softmax(z / T_j) for a known T_j per position: temperature scaling
    finds each T_j back from the logits z (to the grid's 6% steps and the sample's noise)."""
    torch.manual_seed(0)
    true_t = [0.5, 1.0, 2.5]
    z = 3 * torch.randn(4000, 3, 50)  # (n, k, V)
    targets = torch.stack([torch.multinomial(torch.softmax(z[:, j] / t, -1), 1)[:, 0] for j, t in enumerate(true_t)], 1)
    fitted = fit_temperatures(z, targets)
    assert fitted == pytest.approx(true_t, rel=0.1)


def test_the_calibrated_confidence_divides_each_positions_logits_by_its_temperature():
    scores = 3 * torch.randn(3, N_VOCAB)  # (n, n_vocab): block positions 1..3 of a pass
    temperatures = [0.5, 2.0, 4.0, 8.0]   # k_max of them; a pass may read fewer
    expected = torch.stack([torch.softmax(scores[j] / t, -1).max() for j, t in enumerate(temperatures[:3])])
    tokens, confidence = calibrated_confidence(scores, temperatures=temperatures)
    assert torch.equal(tokens, scores.argmax(-1))
    torch.testing.assert_close(confidence, expected)


def test_temperatures_change_the_gate_and_never_the_tokens(student):
    """Where a position's temperature is cold, its confidence nears 1 and the gate lets it
    through; where hot, it nears 1/V and the gate stops there. The tokens are the argmax either
    way: static k's when every mask gets through, the student's k = 1 when none does."""
    prompt, k, tau = [5, 6, 7], 4, 0.5
    run = dict(eos_id=-1, mask_ids=MASKS, k=k)
    calibrated = lambda temperatures: partial(calibrated_confidence, temperatures=temperatures)  # noqa: E731
    plain = generate_mtp(student, prompt, 24, tau=tau, **run)
    assert max(plain.chunks) > 1 and min(plain.chunks[:-1]) < k  # the plain gate stops some passes, not all
    cold = generate_mtp(student, prompt, 24, tau=tau, pick=calibrated([0.01] * k), **run)
    assert cold.chunks == [k] * 6 and cold.tokens == generate_mtp(student, prompt, 24, **run).tokens
    # Position 2 hot, the others cold: every pass stops after its first token.
    hot = generate_mtp(student, prompt, 24, tau=tau, pick=calibrated([0.01, 1e3, 0.01, 0.01]), **run)
    assert hot.chunks == [1] * 24 and hot.tokens == generate_mtp(student, prompt, 24, **{**run, "k": 1}).tokens


def test_an_adapter_student_survives_pickling_as_a_bench_worker_receives_it(teacher):
    """bench.py's workers get their models pickled: the adapter's hooks must go with them."""
    import pickle
    student = copy_of(teacher, adapter_rank=4, adapter_scale=1.0)
    idx = torch.cat([torch.randint(0, N_VOCAB, (1, 10)), torch.full((1, 3), MASK)], 1)
    copy = pickle.loads(pickle.dumps(student))
    assert torch.equal(copy(idx)[0], student(idx)[0])
    assert not torch.equal(copy(idx)[0][:, 10:], copy_of(teacher)(idx)[0][:, 10:])  # the copy's adapter is live
