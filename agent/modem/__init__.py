"""The modem's keeper: poll it, grade it, and recover it when it hangs (recovery is pure)."""
