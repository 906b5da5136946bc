"""The base of every wire model: camelCase on the wire, snake_case in Python.

Kubernetes objects, the trainer's config file and the trainer's summary all share this
convention, so one base class carries it: unknown fields are rejected (a typo such as
`spec.resourcse` fails loudly instead of silently falling back to a default).
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel


class CamelModel(BaseModel):
    """Base for every spec model: camelCase aliases, unknown fields rejected."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        validate_default=True,
    )

    def wire(self) -> dict[str, Any]:
        """The object as it appears in Kubernetes and in config JSON (camelCase, no Nones)."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


# ------------------------------------------------------------------ CEL and field helpers

# CEL: a DNS-1123 subdomain, as Secret and PVC names must be.
DNS_NAME_RULE: dict[str, Any] = {
    "rule": "!format.dns1123Subdomain().validate(self).hasValue()",
    "message": "must be a valid DNS subdomain name: lowercase letters, digits, '-' and '.', "
    "starting and ending with a letter or digit",
}
_DNS_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")

# A Kubernetes resource quantity (apimachinery's resource.Quantity grammar).
_QUANTITY = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+|[numkMGTPE]|[KMGTPE]i)?$")


def cel(*rules: dict[str, Any]) -> dict[str, Any]:
    """`json_schema_extra` carrying CEL rules into the generated CRD."""
    return {"x-kubernetes-validations": list(rules)}


def immutable(section: str) -> dict[str, Any]:
    return {"rule": "self == oldSelf", "message": f"spec.{section} is immutable once set"}


def _check_dns_name(value: str) -> str:
    # The same rule the API server applies through CEL, so `sealtune train` agrees with it.
    if not _DNS_NAME.match(value):
        raise ValueError(str(DNS_NAME_RULE["message"]))
    return value


def _check_quantity(value: str) -> str:
    if not _QUANTITY.match(value):
        raise ValueError(f"{value!r} must be a Kubernetes quantity such as 500m, 4 or 32Gi")
    return value


DnsName = Annotated[str, AfterValidator(_check_dns_name)]
Quantity = Annotated[str, AfterValidator(_check_quantity)]


def dns_name(description: str, default: str | None = None) -> Any:
    """A field holding a Secret/PVC/StorageClass name, validated as the API server does."""
    kwargs: dict[str, Any] = {"description": description, "min_length": 1, "max_length": 253}
    if default is not None:
        kwargs["default"] = default
    return Field(json_schema_extra=cel(DNS_NAME_RULE), **kwargs)


def quantity(default: str, description: str, example: str) -> Any:
    """A field holding a Kubernetes quantity; one CEL rule and one local check for all."""
    return Field(
        default,
        max_length=64,
        description=description,
        json_schema_extra=cel(
            {"rule": "isQuantity(self)", "message": f"must be a quantity such as {example}"}
        ),
    )
