"""Robustness audits that need torch (adversarial attacks); the torch-free audit is shared.runtime.audit."""
