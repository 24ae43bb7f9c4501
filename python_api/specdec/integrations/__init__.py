"""Integrations of specdec into serving engines (:mod:`specdec.integrations.vllm`)."""
