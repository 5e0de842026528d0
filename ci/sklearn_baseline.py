"""scikit-learn reference for the training target: MLPClassifier (one hidden layer of 128, Adam)
on the digits set with 20 % held out. Run: .venv-jax/bin/pip install scikit-learn &&
.venv-jax/bin/python ci/sklearn_baseline.py"""
import time, numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier
X, y = load_digits(return_X_y=True)
X = X / 16.0
Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=0.2, random_state=0)
for hidden in [(128,)]:
    t = time.perf_counter()
    clf = MLPClassifier(hidden_layer_sizes=hidden, solver="adam", random_state=0, max_iter=200)
    clf.fit(Xtr, ytr)
    dt = time.perf_counter() - t
    print(f"sklearn MLPClassifier{hidden} adam: accuracy {clf.score(Xte, yte)*100:.2f} % in {dt:.2f} s ({clf.n_iter_} epochs)")
