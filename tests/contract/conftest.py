from __future__ import annotations

import pytest

from contract.fleet import Fleet
from llm_router.state.connect import Store
from llm_router.state.keys import Keys
from llm_router.state.registry import NodeRegistry, RegistryConfig
from llm_router.state.scripts import FleetScripts


@pytest.fixture
def fleet(
    store: Store,
    keys: Keys,
    scripts: FleetScripts,
    registry: NodeRegistry,
    registry_config: RegistryConfig,
) -> Fleet:
    return Fleet(store, keys, scripts, registry, registry_config)
