"""APGD that stops attacking an input once it is broken (AutoAttack's ``apgd-ce`` and ``apgd-t``).

pyautoattack's APGD (``attack_single_run``) iterates every input of a batch for all
``n_iter`` steps, also those it has already misclassified: it keeps looking for a higher
loss there, but their outcome is settled (``acc`` only ever goes from True to False, and an
input broken at any step is reported broken). :func:`stop_on_broken` gives an APGD object a
``attack_single_run`` that, at every step, computes the forward and backward pass only for
the inputs not broken yet, and is otherwise the same algorithm line by line (L-inf and L2;
L1 and EOT keep the original).

Why the outcome of every other input is unchanged: in APGD everything but the iteration
counter is per input (the random start is drawn once for the whole batch before the loop,
step sizes, the oscillation checks and the best points are per input; the model is in eval
mode, so an input's logits do not depend on the rest of its batch). So an input still
unbroken sees exactly the steps it would have seen, up to the floating-point order of a
convolution over a smaller batch. The one thing that differs for a broken input is which
misclassified iterate is returned: the first one here, the last one in the original; both
are inside the eps-ball and misclassified, and the caller confirms every break on its own
model (:func:`rst_lib.attacks.autoattack.survives`), so the accuracy reported stays an upper
bound on robust accuracy. ``bench/quickstart_levers.py apgd`` compares the two on a ticket.
"""
from __future__ import annotations

import importlib
import types

import torch
import torch.nn as nn
import torch.nn.functional as F


def stop_on_broken(apgd, confirm=None) -> None:
    """Make this APGD object (``APGDAttack`` or ``APGDAttack_targeted``) skip broken inputs.

    ``confirm(x_adv, y)`` (optional): per input, does the model reported on misclassify it?
    For a search in another precision (bf16) than the model reported on: an input stops only
    once an iterate is confirmed broken; one the search model misclassifies but the reported
    model does not keeps iterating, as in the original (whose later iterates, further up the
    loss, are more often confirmed; stopping at the first bf16 break left 10 of 214 more
    digits robust on the quickstart's ticket)."""
    apgd.attack_single_run = types.MethodType(_single_run, apgd)
    apgd.confirm_broken = confirm


def _criterion(apgd):
    """The per-input loss of ``apgd.loss`` as ``f(logits, y, index)``: ``index`` selects the
    targets of a targeted loss for the inputs in the batch (``apgd.y_target`` is per input)."""
    def targeted(loss):
        def f(logits, y, index):
            full = apgd.y_target
            apgd.y_target = full[index]
            try:
                return loss(logits, y)
            finally:
                apgd.y_target = full
        return f
    if apgd.loss == "ce":
        ce = nn.CrossEntropyLoss(reduction="none")
        return lambda logits, y, index: ce(logits, y)
    if apgd.loss == "ce-targeted-cfts":
        return lambda logits, y, index: -1. * F.cross_entropy(logits, y, reduction="none")
    if apgd.loss == "dlr":
        return lambda logits, y, index: apgd.dlr_loss(logits, y)
    if apgd.loss == "dlr-targeted":
        return targeted(apgd.dlr_loss_targeted)
    if apgd.loss == "ce-targeted":
        return targeted(apgd.ce_loss_targeted)
    raise ValueError(f"unknown APGD loss {apgd.loss!r}")


def _loss_grad(apgd, criterion, x_adv, y, index):
    """Logits, per-input loss and input gradient on the inputs ``index`` only."""
    xa = x_adv[index].clone().requires_grad_()
    with torch.enable_grad():
        logits = apgd.model(xa)
        loss_indiv = criterion(logits, y[index], index)
        grad = torch.autograd.grad(loss_indiv.sum(), [xa])[0].detach()
    return logits.detach(), loss_indiv.detach(), grad


@torch.no_grad()
def _confirmed(apgd, broken, x_adv, y, n):
    """(n,) bool: the inputs ``broken`` (indices) whose iterate the reported model misclassifies
    (all of them without a ``confirm_broken``)."""
    out = torch.zeros(n, dtype=torch.bool, device=y.device)
    confirm = getattr(apgd, "confirm_broken", None)
    if len(broken):
        out[broken] = True if confirm is None else confirm(x_adv[broken], y[broken]).to(y.device)
    return out


def _single_run(self, x, y, x_init=None):
    """``APGDAttack.attack_single_run`` with the passes of broken inputs left out (see the
    module docstring); the lines follow the original's order, so the two read side by side."""
    if self.norm not in ("Linf", "L2") or self.eot_iter != 1 or self.is_tf_model:
        return type(self).attack_single_run(self, x, y, x_init)  # the class's own (original)
    package = type(self).__module__.rsplit(".", 1)[0]  # pyautoattack, or fra31's autoattack
    checks = importlib.import_module(package + ".checks")
    if len(x.shape) < self.ndims:
        x, y = x.unsqueeze(0), y.unsqueeze(0)
    if self.norm == "Linf":
        t = 2 * torch.rand(x.shape).to(self.device).detach() - 1
    else:
        t = torch.randn(x.shape).to(self.device).detach()
    x_adv = x + self.eps * torch.ones_like(x).detach() * self.normalize(t)
    if x_init is not None:
        x_adv = x_init.clone()
    x_adv = x_adv.clamp(0., 1.)
    x_best, x_best_adv = x_adv.clone(), x_adv.clone()
    n = x.shape[0]
    loss_steps = torch.zeros([self.n_iter, n]).to(self.device)
    criterion = _criterion(self)
    everyone = torch.arange(n, device=x.device)
    logits, loss_indiv, grad = _loss_grad(self, criterion, x_adv, y, everyone)
    grad_best = grad.clone()
    if self.loss in ["dlr", "dlr-targeted"]:
        checks.check_zero_gradients(grad, logger=self.logger)  # as the original
    acc = logits.max(1)[1] == y
    done = _confirmed(self, everyone[~acc], x_adv, y, n)  # broken for good: no more passes
    loss_best = loss_indiv.clone()
    step_size = 2. * self.eps * torch.ones([n, *([1] * self.ndims)]).to(self.device).detach()
    x_adv_old = x_adv.clone()
    k = self.n_iter_2 + 0
    counter3 = 0
    loss_best_last_check = loss_best.clone()
    reduced_last_check = torch.ones_like(loss_best)
    for i in range(self.n_iter):
        active = (~done).nonzero().squeeze(1)  # the inputs not broken yet: only these move on
        if len(active) == 0:
            break
        with torch.no_grad():
            x_adv = x_adv.detach()
            grad2 = x_adv - x_adv_old
            x_adv_old = x_adv.clone()
            a = 0.75 if i > 0 else 1.0
            if self.norm == "Linf":
                x_adv_1 = x_adv + step_size * torch.sign(grad)
                x_adv_1 = torch.clamp(torch.min(torch.max(x_adv_1, x - self.eps), x + self.eps), 0.0, 1.0)
                x_adv_1 = torch.clamp(torch.min(torch.max(
                    x_adv + (x_adv_1 - x_adv) * a + grad2 * (1 - a), x - self.eps), x + self.eps), 0.0, 1.0)
            else:
                L2_norm = importlib.import_module(package + ".other_utils").L2_norm
                x_adv_1 = x_adv + step_size * self.normalize(grad)
                x_adv_1 = torch.clamp(x + self.normalize(x_adv_1 - x) * torch.min(
                    self.eps * torch.ones_like(x).detach(), L2_norm(x_adv_1 - x, keepdim=True)), 0.0, 1.0)
                x_adv_1 = x_adv + (x_adv_1 - x_adv) * a + grad2 * (1 - a)
                x_adv_1 = torch.clamp(x + self.normalize(x_adv_1 - x) * torch.min(
                    self.eps * torch.ones_like(x).detach(), L2_norm(x_adv_1 - x, keepdim=True)), 0.0, 1.0)
            x_adv = x_adv_1 + 0.
        logits_a, loss_a, grad_a = _loss_grad(self, criterion, x_adv, y, active)
        grad[active] = grad_a
        pred_a = logits_a.max(1)[1] == y[active]
        acc[active] = torch.min(acc[active], pred_a)
        broken = active[~pred_a]
        x_best_adv[broken] = x_adv[broken] + 0.
        done |= _confirmed(self, broken, x_adv, y, n)
        with torch.no_grad():
            # the losses of this step (a broken input's entry is unused); float32 as loss_steps,
            # whatever autocast computed them in (bf16 values are exact in float32)
            y1 = loss_steps[i - 1].clone() if i > 0 else loss_best.float()
            y1[active] = loss_a.float()
            loss_steps[i] = y1 + 0
            ind = active[y1[active] > loss_best[active]]
            x_best[ind] = x_adv[ind].clone()
            grad_best[ind] = grad[ind].clone()
            loss_best[ind] = y1[ind].to(loss_best.dtype)
            counter3 += 1
            if counter3 == k:
                fl_oscillation = self.check_oscillation(loss_steps, i, k, loss_best, k3=self.thr_decr)
                fl_reduce_no_impr = (1. - reduced_last_check) * (loss_best_last_check >= loss_best).float()
                fl_oscillation = torch.max(fl_oscillation, fl_reduce_no_impr)
                reduced_last_check = fl_oscillation.clone()
                loss_best_last_check = loss_best.clone()
                if fl_oscillation.sum() > 0:
                    ind_fl_osc = (fl_oscillation > 0).nonzero().squeeze()
                    step_size[ind_fl_osc] /= 2.0
                    x_adv[ind_fl_osc] = x_best[ind_fl_osc].clone()
                    grad[ind_fl_osc] = grad_best[ind_fl_osc].clone()
                k = max(k - self.size_decr, self.n_iter_min)
                counter3 = 0
    return x_best, acc, loss_best, x_best_adv

