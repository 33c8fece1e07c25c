"""The gateway shell: the policy enforced by the kernel for every forwarded packet (nftables
interval sets built from the decision engine), the proxy for the proxied ports, receipts."""
