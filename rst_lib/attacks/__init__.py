"""Attacks in [0, 1] pixel space, one small class per attack, called as ``attack(x, y)``:
FGSM, PGD and the training variants (:mod:`.gradient`), AutoAttack (:mod:`.autoattack`),
uniform noise on the eps-ball (:mod:`.noise`)."""
from .autoattack import AUTOATTACK_VERSIONS, autoattack_robust
from .gradient import FGSM, PGD, Attack, CarriedFGSM, TradesPGD, make_attack
from .noise import UniformNoise

__all__ = ["AUTOATTACK_VERSIONS", "autoattack_robust", "FGSM", "PGD", "Attack", "CarriedFGSM",
           "TradesPGD", "make_attack", "UniformNoise"]
