"""moto's server with one addition: CreateNetworkInterface keeps the
InterfaceType it is given. moto 5.2 answers "interface" for every ENI, but
the VPC resource controller creates the trunk ENI of security groups for
pods with InterfaceType=trunk, and that is how trunkline-agent tells the
trunk from the node's other ENIs (DescribeNetworkInterfaces). Nothing else
of moto changes."""

import sys

from moto.ec2.responses.elastic_network_interfaces import ElasticNetworkInterfaces
from moto.server import main

_create = ElasticNetworkInterfaces.create_network_interface


def create_network_interface(self):
    res = _create(self)
    kind = self._get_param("InterfaceType")
    if kind:
        res.result["NetworkInterface"].interface_type = kind
    return res


ElasticNetworkInterfaces.create_network_interface = create_network_interface

if __name__ == "__main__":
    sys.exit(main())
