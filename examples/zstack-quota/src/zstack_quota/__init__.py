"""zstack-quota: per-account VM quotas for zstack-py management nodes."""

from .quota import QUOTA_VM_NUM, VM_NUM, QuotaErrors

__all__ = ["QUOTA_VM_NUM", "QuotaErrors", "VM_NUM"]
