"""The seed's parallel tools over a nine tree: each is a `nine` verb and a `nine-TOOL`
script (cmd/), with its options in docs/tools.md.

- nine.tools.common: what they share: the root's address (-a, $NINE_ADDR, the config
  file), the hosts a command names (-w, -x, -g, as clush and pdsh), where a path on
  each host lies in the root's name space, how failed hosts are named;
- nine.tools.pgrep: grep on many hosts, the matching done at the leaves;
- nine.tools.ptail: tail (-f) of one file on many hosts, as one group stream;
- nine.tools.ptop: top over many hosts.
"""
