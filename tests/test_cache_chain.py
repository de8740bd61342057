"""One cache serves the CNA chain: CNA → MaskKeep → PE-DAG → LogicChain on one prompt.

Forward passes are counted with a forward hook on the bridge's embedding module: every
full forward calls it once per batch (one prompt: one batch), and nothing else does.
"""

import pytest

from arithlens.cna import ComparativeNeuronScores, LogicChain, MaskKeep, PredictionEnhancingDAG
from arithlens.core.interventions import ZeroHead

PROMPT = "12+7="
HEAD = ZeroHead(1, 2)
MASK_K = (6, 2)
TABLE_K = (6, 2)


@pytest.fixture()
def model():
    """A fresh model (empty memo); its last-position trim probe (one forward) already done."""
    from arithlens.testing import tiny_llama

    m = tiny_llama()
    m.last_position_trim()
    return m


class Counter:
    """Counts calls of the bridge's embedding module while attached."""

    def __init__(self, model):
        self.calls = 0
        self.handle = model.bridge.embed.register_forward_hook(self._hook)

    def _hook(self, module, args, out):
        self.calls += 1

    def take(self) -> int:
        n, self.calls = self.calls, 0
        return n


def analyses():
    return (
        ComparativeNeuronScores(intervention=HEAD),
        MaskKeep(intervention=HEAD, k=MASK_K),
        PredictionEnhancingDAG(intervention=HEAD, k=5, k_table=TABLE_K),
        LogicChain(intervention=HEAD, k=5, k_shallow=3),
    )


def test_chain_runs_once_clean_and_once_per_intervention(model):
    cna, mk, dag, chain = analyses()
    counter = Counter(model)
    try:
        cache = model.cache(PROMPT, names=[cna, mk, dag, chain], positions="all")
        assert counter.take() == 1  # the one clean pass
        cna_res = cna.run(model, PROMPT, cache=cache)
        assert counter.take() == 1  # the pass with the head zeroed
        mk_res = mk.run(model, PROMPT, cache=cache, cna=cna_res)
        assert counter.take() == 2 * len(MASK_K)  # mask and keep, per K
        dag_res = dag.run(model, PROMPT, cache=cache, cna=cna_res)
        assert counter.take() == len(TABLE_K)  # the lowest top-K neuron zeroed, per K
        chain_res = chain.run(model, PROMPT, cache=cache, cna=cna_res)
        assert counter.take() == 0  # every stage reads the cache and the CNA result
    finally:
        counter.handle.remove()
    # In all: 1 clean + 1 (CNA) + 2·2 (mask/keep) + 2 (Table 6) = 8 passes.

    # The same numbers as each analysis run alone, with no cache given.
    model.clear_cache()
    assert cna.run(model, PROMPT).df.equals(cna_res.df)
    model.clear_cache()
    assert mk.run(model, PROMPT).df.equals(mk_res.df)
    model.clear_cache()
    alone = dag.run(model, PROMPT)
    assert alone.df.equals(dag_res.df) and alone.nodes.equals(dag_res.nodes) and alone.table6.equals(dag_res.table6)
    model.clear_cache()
    alone = chain.run(model, PROMPT)
    assert alone.df.equals(chain_res.df) and alone.root == chain_res.root


def test_logic_chain_alone_runs_one_clean_pass(model):
    chain = LogicChain(intervention=HEAD, k=5, k_shallow=3)
    counter = Counter(model)
    try:
        chain.run(model, PROMPT)
    finally:
        counter.handle.remove()
    assert counter.take() == 2  # one clean pass at every position, one with the head zeroed (CNA)


def test_a_cache_missing_the_chain_hooks_is_refused(model):
    cna, mk, dag, chain = analyses()
    last_only = model.cache(PROMPT, names=[cna, mk, dag], memo=False)
    with pytest.raises(ValueError, match="positions='all'|lacks"):
        chain.run(model, PROMPT, cache=last_only)
    bare = model.cache(PROMPT, memo=False)
    with pytest.raises(ValueError, match="lacks"):
        dag.run(model, PROMPT, cache=bare)
