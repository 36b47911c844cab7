"""Realistic secrets (all fake) and realistic look-alikes that must survive redaction."""
# ruff: noqa: E501  (secrets are long; splitting them would hide what they look like)

from __future__ import annotations

OPIK_KEY = "opk_3Jf9QmX2vR7tL1pZ8kW4"

# (pattern name, secret as it appears in text)
SECRETS: tuple[tuple[str, str], ...] = (
    ("openai", "sk-proj-Ab3dEf6hIj9kLm2nOp5qRs8tUv1wXy4zAb7dEf0hIj3kLm6nQ2"),
    ("openai", "sk-4fJ9kL2mN8pQ1rS5tU7vW3xY6zA0bC4dE8fG2hI5jK9lM1nO"),
    ("anthropic", "sk-ant-api03-Zx8Yw7Vu6Ts5Rq4Po3Nm2Lk1Ji0Hg9Fe8Dc7Ba6Zx5Yw4Vu3Ts2Rq1-AbCdEf"),
    ("google_api_key", "AIzaSyD3x7Qm9vLp2Kf8Rt5Wn1Hc6Jb4Ye0UgA_"),
    ("aws_access_key_id", "AKIAIOSFODNN7EXAMPLE"),
    ("aws_access_key_id", "ASIAY34FZKBOKMUTVV7A"),
    ("azure_storage_key", "AccountKey=q1W2e3R4t5Y6u7I8o9P0a1S2d3F4g5H6j7K8l9Z0x1C2v3B4n5M6q7W8e9R0t1Y2u3I4o5P6a7S8d9F0g1H2jA=="),
    ("huggingface", "hf_AbCdEfGhIjKlMnOpQrStUvWxYzAbCdEfGh"),
    ("github", "ghp_1a2B3c4D5e6F7g8H9i0J1k2L3m4N5o6P7q8R"),
    ("github", "github_pat_11ABCDEFG0aBcDeFgHiJkLmN_oPqRsTuVwXyZ0123456789aBcDeFgHiJkLmNoPqRsTuVwXyZ01234"),
    ("slack", "xoxb-1234567890-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx"),
    ("jwt", "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9lIiwiaWF0IjoxNTE2MjM5MDIyfQ.SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c"),
    ("bearer", "Bearer 9f8e7d6c5b4a39281706f5e4d3c2b1a0"),
    ("email", "jane.doe+billing@example-corp.co.uk"),
    ("card", "4111 1111 1111 1111"),
    ("card", "5500-0000-0000-0004"),
    ("card", "378282246310005"),
    ("card", "4012888888881881"),
    ("opik_api_key", OPIK_KEY),
    ("private_key", "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA7bq8Zx1f2Lk9QmX2vR7tL1pZ8kW4\n"
                    "q1W2e3R4t5Y6u7I8o9P0a1S2d3F4g5H6j7K8l9Z0x1C2\n-----END RSA PRIVATE KEY-----"),
    ("aws_secret_access_key", "AWS_SECRET_ACCESS_KEY=wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"),
    ("aws_secret_access_key", "aws_secret_access_key: 'je7MtGbClwBF/2Zp9Utk/h3yCo8nvbEXAMPLEKEY'"),
    ("assignment", "password=hunter2!x"),
    ("assignment", "token = 'abc123def'"),
    ("assignment", '"client_secret": "s3cr3t-value"'),
)

# Patterns that mask a part of the match (the label stays readable).
LABELLED = ("bearer", "aws_secret_access_key", "assignment")

# Text that looks a bit like a secret and must stay exactly as it is.
NON_SECRETS: tuple[str, ...] = (
    "4111 1111 1111 1112",  # 16 digits, fails the Luhn check
    "4242424242424241",
    "550e8400-e29b-41d4-a716-446655440000",
    "12345678-1234-5678-1234-567812345678",
    "2026-11-01T12:34:56.789Z",
    "1767225600000",
    "The risk-assessment-for-the-quarterly-review and the task-management-system-redesign "
    "shipped; see the scikit-learn docs, ask@ the desk, and remember that the bearer of bad "
    "news is not to blame.",
    "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
    "call +1 415 555 0100 ext. 12",
    "the password policy asks for 12 characters; a token is a unit of text",
    "max_tokens=4096 and tokens: 12",
    "sha1 2fd4e1c67a2d28fced849ee1bb76e7391b93eb12",
    "-----BEGIN CERTIFICATE-----",
)
