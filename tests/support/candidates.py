"""Candidate groups as the pipelines' generate stage writes them, for the pairing tests."""


def candidate_group(prompt: str, cands: list[tuple]) -> dict:
    """One prompt's group: cands are (text, reward, reason); a candidate with a reason is invalid and
    carries no reward."""
    out = []
    for text, reward, reason in cands:
        c = {"text": text, "reason": reason}
        if reason is None:
            c.update(reward=reward, chars=len(text))
        out.append(c)
    return {"prompt": [{"role": "user", "content": prompt}], "candidates": out}
