"""Attacks in [0, 1] pixel space, one small class per attack, called as ``attack(x, y)``:
FGSM, PGD and the training variants (:mod:`.gradient`), AutoAttack (:mod:`.autoattack`),
uniform noise on the eps-ball (:mod:`.noise`)."""
from ..utils.lazy import lazy_exports

# name -> the module that defines it, imported when the name is first read (PEP 562):
# importing the package stays cheap (no torch, papermill or scipy until needed)
__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    ".autoattack": ("AUTOATTACK_VERSIONS", "autoattack_robust"),
    ".gradient": ("FGSM", "PGD", "Attack", "CarriedFGSM", "TradesPGD", "make_attack"),
    ".noise": ("UniformNoise",),
})
