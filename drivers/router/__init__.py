"""Router drivers: the Linux router (netlink + nftables) and MikroTik RouterOS."""
