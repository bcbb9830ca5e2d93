"""The papers behind the optimizers, as the model card cites them next to the method's paper.

Downgrade to Upgrade (Lang et al., arXiv 2510.00761) grades optimizers by the information they use and proposes the
FO-ZO hybrid: every zeroth-order, hybrid, sign-based or compressed (quantized-update, 8-bit) optimizer here comes
from its study, and so does its Sophia comparison. Sophia as an unlearning optimizer is SOUL's (Jia et al., EMNLP
2024, arXiv 2404.18239). Plain AdamW and SGD cite nothing. Which optimizer cites which: each registry entry's
``papers`` (``hf_unlearn.optim.registry``).
"""

from __future__ import annotations


DOWNGRADE_TO_UPGRADE = {
    "title": "Downgrade to Upgrade: Optimizer Simplification Enhances Robustness in LLM Unlearning",
    "arxiv_id": "2510.00761",
    "citation": "Lang et al. 2025, Downgrade to Upgrade: Optimizer Simplification Enhances Robustness in LLM "
    "Unlearning (arXiv:2510.00761)",
    "bibtex": "@article{lang2025downgrade,\n  title={Downgrade to Upgrade: Optimizer Simplification Enhances "
    "Robustness in LLM Unlearning},\n  author={Lang, Yicheng and Zhang, Yihua and Fan, Chongyu and Wang, Changsheng "
    "and Jia, Jinghan and Liu, Sijia},\n  journal={arXiv preprint arXiv:2510.00761},\n  year={2025}\n}",
}
SOUL = {
    "title": "SOUL: Unlocking the Power of Second-Order Optimization for LLM Unlearning",
    "arxiv_id": "2404.18239",
    "citation": "Jia et al. 2024, SOUL: Unlocking the Power of Second-Order Optimization for LLM Unlearning "
    "(arXiv:2404.18239)",
    "bibtex": "@inproceedings{jia2024soul,\n  title={SOUL: Unlocking the Power of Second-Order Optimization for LLM "
    "Unlearning},\n  author={Jia, Jinghan and Zhang, Yihua and Zhang, Yimeng and Liu, Jiancheng and Runwal, Bharat "
    "and Diffenderfer, James and Kailkhura, Bhavya and Liu, Sijia},\n  booktitle={Proceedings of the 2024 "
    "Conference on Empirical Methods in Natural Language Processing},\n  year={2024}\n}",
}
