"""The tiny end-to-end demo: the shipped demo model (`model.py`), the synthetic mannequin clips it was trained on and
is shown with (`synthetic.py`), and `python -m diffsynth.demo` (`run.py`)."""
