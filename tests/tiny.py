"""The tiny run settings the tests train with: one base and its named variants.

mnist5k, conv2 at width 0.125 (keep 0.2, last BN), FGSM-RS training: a run takes about a
second on one CPU thread. A variant names what it changes; a test that needs one more
change writes ``{**TINY, "epochs": 2}`` where it uses it.
"""

TINY = dict(dataset="mnist5k", model="conv2", width=0.125, keep_ratio=0.2, end_with_bn=True,
            train_examples=256, eval_examples=64, batch_size=64, train_attack="fgsm_rs",
            eps=0.1, alpha=0.125, eval_alpha=0.025, eval_steps=2, epochs=1,
            autoattack="none", final_examples=200, precision="fp32", autoattack_precision="fp32")
# fp32 pinned: `auto` picks bf16 where the CPU has fast native bf16 (even for this network), so
# the numbers these tests check would differ from machine to machine; `auto` itself is tested
# in test_auto_precision.py (and by the quickstart smoke run, which leaves it to the default)

# twice the training inputs, the default number of epochs
TINY_512 = {k: v for k, v in TINY.items() if k != "epochs"} | dict(train_examples=512)

# a longer PGD evaluation on fewer final inputs, the default number of epochs, lr 0.1
TINY_256 = {k: v for k, v in TINY.items() if k != "epochs"} | dict(
    eval_steps=3, lr=0.1, final_examples=64)

# more training and validation inputs (learning shows), the default final evaluation
TINY_600 = {k: v for k, v in TINY_256.items() if k != "final_examples"} | dict(
    train_examples=600, eval_examples=100)

# PGD-3 training from the first epoch (the attack whose arithmetic precision matters)
TINY_PGD = TINY | dict(train_examples=320, eval_examples=100, final_examples=100,
                       train_attack="pgd", steps=3, alpha=0.025, eps_warmup_epochs=0,
                       eval_steps=3, lr=0.1)

# a final evaluation of 64 inputs (what an exported model card reports)
TINY_EXPORT = TINY | dict(final_examples=64)
