"""Bootstrap standard errors: close to the analytic figure where one exists, seeded, combined as a mean."""
import math

import numpy as np
import torch

from training.bootstrap import se_mean, se_mean_per_class_recall, se_of_mean
from training.retrieval import recall_at
from training.zeroshot import metrics, standard_errors


def test_se_of_an_accuracy_matches_the_binomial_formula():
    hits = np.r_[np.ones(300), np.zeros(700)]
    se = se_mean(hits, reps=2000)
    assert abs(se - math.sqrt(0.3 * 0.7 / 1000)) < 0.0015
    assert se_mean(hits, reps=2000) == se  # seeded
    assert se_mean(np.ones(50)) == 0.0 and se_mean(np.ones(1)) == 0.0


def test_per_class_recall_se_and_combination():
    target = np.repeat(np.arange(4), 50)
    hits = (np.arange(200) % 2).astype(float)  # every class at recall 0.5
    se = se_mean_per_class_recall(hits, target, reps=1000)
    assert 0.02 < se < 0.05  # ~ sqrt(0.25 / 50) / 2 per mean of 4 classes
    assert se_of_mean([0.03, 0.04]) == 0.025


def test_metrics_carry_their_standard_errors():
    logits = torch.eye(10)[torch.arange(100) % 10]
    target = torch.arange(100) % 10
    target[:20] = (target[:20] + 1) % 10  # 80% right
    m, se = metrics(logits, target, 10), standard_errors(logits, target)
    assert abs(m["acc1"] - 0.8) < 1e-6 and 0.02 < se["acc1"] < 0.06 and se["mean_per_class_recall"] > 0
    r = recall_at(torch.eye(30), torch.arange(30))
    assert r["mean_recall@1"] == 1.0 and r["se"]["mean_recall@1"] == 0.0
