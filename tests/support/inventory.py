"""Read an inventory's variables the way a play sees them (templated, vault decrypted)."""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
LAB_INVENTORY = ROOT / "inventories" / "lab"


@cache
def _variable_manager(inventory: Path):
    from ansible.inventory.manager import InventoryManager
    from ansible.parsing.dataloader import DataLoader
    from ansible.parsing.vault import VaultSecret
    from ansible.plugins.loader import init_plugin_loader
    from ansible.vars.manager import VariableManager

    init_plugin_loader()
    loader = DataLoader()
    password_file = inventory / "vault-password"
    if password_file.exists():
        loader.set_vault_secrets([("lab", VaultSecret(password_file.read_bytes().strip()))])
    manager = InventoryManager(loader=loader, sources=[str(inventory)])
    return loader, manager, VariableManager(loader=loader, inventory=manager)


def host_var(host: str, name: str, inventory: Path = LAB_INVENTORY) -> Any:
    """The value of variable `name` for `host`, fully templated."""
    from ansible.template import Templar

    loader, manager, variables = _variable_manager(inventory)
    hostvars = variables.get_vars(host=manager.get_host(host))
    return Templar(loader=loader, variables=hostvars).template(hostvars[name])


def container(host: str, inventory: Path = LAB_INVENTORY) -> str:
    """The podman container of a lab host."""
    return f"{host_var(host, 'lab_container_prefix', inventory)}{host}"
