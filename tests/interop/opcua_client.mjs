// An independent OPC UA client (node-opcua) against a TwinEdge PLC: browse to an asset, read a tag with
// its EngineeringUnits and EURange, write a setpoint (good, wrong type, out of range), print JSON.
//
//   node opcua_client.mjs <endpoint> <namespace uri> <site/area/plc/asset> <tag> <setpoint> <value>
//
// Run by tests/test_opcua_interop.py. Browsing is by browse name step by step from the Objects folder,
// the way a SCADA tag browser walks the tree; NodeIds are never guessed.
import {
  OPCUAClient, MessageSecurityMode, SecurityPolicy, AttributeIds, DataType, NodeClassMask,
  BrowseDirection, makeBrowsePath, ObjectIds,
} from "node-opcua-client";

const [endpoint, namespaceUri, assetPath, tagKey, setpointKey, value] = process.argv.slice(2);

async function child(session, parent, ns, name) {
  const result = await session.browse({
    nodeId: parent, browseDirection: BrowseDirection.Forward, includeSubtypes: true,
    referenceTypeId: "HierarchicalReferences", nodeClassMask: NodeClassMask.Object | NodeClassMask.Variable,
    resultMask: 0x3f,
  });
  const ref = result.references.find((r) => r.browseName.namespaceIndex === ns && r.browseName.name === name);
  if (!ref) throw new Error(`no child ${ns}:${name} under ${parent.toString()}`);
  return ref.nodeId;
}

async function property(session, nodeId, name) {
  const path = await session.translateBrowsePath(makeBrowsePath(nodeId, `.${name}`));
  const target = path.targets?.[0]?.targetId;
  if (!target) throw new Error(`no property ${name}`);
  return (await session.read({ nodeId: target, attributeId: AttributeIds.Value })).value.value;
}

async function write(session, nodeId, dataType, v) {
  const code = await session.write({
    nodeId, attributeId: AttributeIds.Value, value: { value: { dataType, value: v } },
  });
  return code.name;
}

const client = OPCUAClient.create({
  applicationName: "twinedge-interop", securityMode: MessageSecurityMode.None,
  securityPolicy: SecurityPolicy.None, endpointMustExist: false, connectionStrategy: { maxRetry: 2 },
  requestedSessionTimeout: 30000,
});
const out = {};
try {
  await client.connect(endpoint);
  const session = await client.createSession();
  const namespaces = (await session.read({ nodeId: "i=2255", attributeId: AttributeIds.Value })).value.value;
  const ns = namespaces.indexOf(namespaceUri);
  out.namespace_index = ns;
  let node = `i=${ObjectIds.ObjectsFolder}`;
  for (const name of assetPath.split("/")) node = await child(session, node, ns, name);
  out.asset = node.toString();
  const tag = await child(session, node, ns, tagKey);
  const dv = await session.read({ nodeId: tag, attributeId: AttributeIds.Value });
  out.value = dv.value.value;
  out.status = dv.statusCode.name;
  out.data_type = DataType[dv.value.dataType];
  out.source_timestamp = dv.sourceTimestamp?.toISOString() ?? null;
  const eu = await property(session, tag, "EngineeringUnits");
  out.engineering_units = {
    namespace_uri: eu.namespaceUri, unit_id: eu.unitId, display_name: eu.displayName.text,
    description: eu.description.text,
  };
  const range = await property(session, tag, "EURange");
  out.eu_range = [range.low, range.high];
  const typeDef = await session.browse({
    nodeId: node, browseDirection: BrowseDirection.Forward, referenceTypeId: "HasTypeDefinition", resultMask: 0x3f,
  });
  out.type_definition = typeDef.references[0]?.browseName.name ?? null;
  const setpoint = await child(session, node, ns, setpointKey);
  out.write_good = await write(session, setpoint, DataType.Float, Number(value));
  out.write_double = await write(session, setpoint, DataType.Double, Number(value));
  out.write_out_of_range = await write(session, setpoint, DataType.Float, 1e6);
  await session.close();
} catch (err) {
  out.error = String(err?.message ?? err);
} finally {
  await client.disconnect();
}
console.log(JSON.stringify(out));
process.exit(out.error ? 1 : 0);
