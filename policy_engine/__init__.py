"""policy_engine: a policy-as-code permission engine for third-party Python plugins."""
