"""What ``rst-workbook import`` accepts: the seeds whose checkpoints it reads and the
parameters ``-p`` may set. Apart from :mod:`.seeds` (which imports torch) so that the
CLI can describe the command without loading torch."""

SOURCES = ("rst", "rbrn")
PARAMS = {  # what -p may set for an import
    "model": "the seed's architecture (cResNet18, Conv4, ResNet18_001_p1, ...); default: the "
             "checkpoint's 'arch', else the file name {network}_{keep}.pth",
    "keep_ratio": "the kept fraction the seed ran with (--prune-rate); default: the file name",
    "adaptive_p": "RBRN's --pr-scale (required for rbrn; rst: 1)",
    "end_with_bn": "RBRN's --end-with-bn (the checkpoint has last.* keys)",
    "dataset": "the dataset the checkpoint was trained on, for 06_evaluate (default cifar10)",
    "data_dir": "where that dataset is", "name": "a name for the ticket",
}
