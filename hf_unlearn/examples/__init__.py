"""Worked examples built on the library, never imported by it: scikit-learn's digits (`digits`, the README's demo in
`demo`) and spoken digits (`spoken_digits`). Their unlearning budgets come from `recipes/digits/`."""
