// deploy/: the Kubernetes manifests parse and agree with each other and with the daemon
// (labels, ports, paths, the picker's config), the Dockerfiles with the tree; and a real
// daemon started with the manifest's own arguments, scraped the way the endpoint picker's
// extractor reads it, shows the adapters running and waiting while requests are in flight.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, test } from 'node:test';
import { parseAllDocuments, parse as parseYaml } from 'yaml';

import { addon } from '../helpers/engine.js';
import { repoRoot } from '../helpers/paths.js';
import { StreamClient, type Frame } from '../helpers/ws-client.js';
import { extractEndpointMetrics, loraAffinityScore, type EngineConfig } from '../server/epp-extractor.js';
import { parsePrometheus } from '../server/prometheus-parser.js';

const ROOT = repoRoot();
const K8S = join(ROOT, 'deploy', 'k8s');
const native = addon();

/** A parsed manifest object (shapes are checked by the assertions). */
type Obj = any;

function load(): Obj[] {
  const kustomization = parseYaml(readFileSync(join(K8S, 'kustomization.yaml'), 'utf8')) as { resources: string[] };
  return kustomization.resources.flatMap((file) =>
    parseAllDocuments(readFileSync(join(K8S, file), 'utf8')).map((d) => {
      assert.deepEqual(d.errors, [], `${file} parses`);
      return d.toJS() as Obj;
    }),
  );
}

function only(objs: Obj[], kind: string, pred: (o: Obj) => boolean = () => true): Obj {
  const found = objs.filter((o) => o.kind === kind && pred(o));
  assert.equal(found.length, 1, `exactly one ${kind}`);
  return found[0];
}

function flag(args: string[], name: string): string {
  const at = args.indexOf(name);
  assert.ok(at >= 0 && at + 1 < args.length, `${name} is given a value`);
  return args[at + 1];
}

const subset = (small: Record<string, string>, big: Record<string, string>) => Object.entries(small).every(([k, v]) => big[k] === v);

function manifests() {
  const objs = load();
  const pool = only(objs, 'InferencePool');
  const servers = only(objs, 'Deployment', (d) => subset(pool.spec.selector.matchLabels, d.spec.template.metadata.labels));
  const epp = only(objs, 'Deployment', (d) => d !== servers);
  const eppConfigMap = only(objs, 'ConfigMap');
  const eppService = only(objs, 'Service');
  return { objs, pool, servers, epp, eppConfigMap, eppService };
}

function pickerConfig(eppConfigMap: Obj, epp: Obj): Obj {
  const container = epp.spec.template.spec.containers[0];
  const file = flag(container.args, '--config-file');
  const mount = container.volumeMounts.find((m: Obj) => file.startsWith(m.mountPath + '/'));
  assert.ok(mount, `--config-file ${file} lies on a mounted volume`);
  const volume = epp.spec.template.spec.volumes.find((v: Obj) => v.name === mount.name);
  assert.equal(volume.configMap.name, eppConfigMap.metadata.name);
  const key = file.slice(mount.mountPath.length + 1);
  assert.ok(key in eppConfigMap.data, `the ConfigMap holds ${key}`);
  return parseYaml(eppConfigMap.data[key]);
}

describe('deploy/', () => {
  test('the model servers, the InferencePool and the endpoint picker agree on labels, ports and names', () => {
    const { objs, pool, servers, epp, eppConfigMap, eppService } = manifests();
    // Model servers.
    const podLabels = servers.spec.template.metadata.labels;
    assert.ok(subset(servers.spec.selector.matchLabels, podLabels), 'the Deployment selects its own pods');
    const server = servers.spec.template.spec.containers[0];
    const port = Number(flag(server.args, '--port'));
    assert.equal(flag(server.args, '--host'), '0.0.0.0');
    const http = server.ports.find((p: Obj) => p.containerPort === port);
    assert.ok(http, `a container port is the serve --port ${port}`);
    for (const probe of [server.startupProbe, server.readinessProbe, server.livenessProbe]) {
      assert.equal(probe.httpGet.path, '/health');
      assert.ok(probe.httpGet.port === http.name || probe.httpGet.port === port);
    }
    const volumes = new Set(servers.spec.template.spec.volumes.map((v: Obj) => v.name));
    for (const m of server.volumeMounts) assert.ok(volumes.has(m.name), `volume ${m.name} is declared`);
    const mounted = (path: string) => server.volumeMounts.some((m: Obj) => path === m.mountPath || path.startsWith(m.mountPath + '/'));
    assert.ok(mounted(flag(server.args, '--model')), 'the model comes from a volume');
    assert.ok(mounted(flag(server.args, '--adapters-dir')), 'the adapters come from a volume');
    for (const a of server.args as string[]) {
      for (const [, v] of a.matchAll(/\$\((\w+)\)/g)) assert.ok(server.env.some((e: Obj) => e.name === v), `$(${v}) is in env`);
    }

    // InferencePool (gateway-api-inference-extension v1).
    assert.equal(pool.apiVersion, 'inference.networking.k8s.io/v1');
    assert.ok(subset(pool.spec.selector.matchLabels, podLabels));
    assert.deepEqual(pool.spec.targetPorts, [{ number: port }]);
    assert.equal(pool.spec.endpointPickerRef.name, eppService.metadata.name);
    const extProc = eppService.spec.ports.find((p: Obj) => p.port === pool.spec.endpointPickerRef.port.number);
    assert.ok(extProc, 'the pool names a port of the picker Service');
    assert.equal(extProc.appProtocol, 'kubernetes.io/h2c');
    const route = only(objs, 'HTTPRoute');
    assert.deepEqual(route.spec.rules.flatMap((r: Obj) => r.backendRefs), [{ group: 'inference.networking.k8s.io', kind: 'InferencePool', name: pool.metadata.name }]);

    // Endpoint picker.
    const eppPod = epp.spec.template;
    assert.ok(subset(epp.spec.selector.matchLabels, eppPod.metadata.labels));
    assert.ok(subset(eppService.spec.selector, eppPod.metadata.labels), 'the picker Service selects the picker');
    const picker = eppPod.spec.containers[0];
    assert.match(picker.image, /^ghcr\.io\/llm-d\/llm-d-router-endpoint-picker:v\d+\.\d+\.\d+$/);
    assert.equal(flag(picker.args, '--pool-name'), pool.metadata.name);
    assert.equal(flag(picker.args, '--pool-group'), pool.apiVersion.split('/')[0]);
    const grpc = picker.ports.find((p: Obj) => p.name === extProc.targetPort || p.containerPort === extProc.targetPort);
    assert.equal(grpc?.containerPort, 9002, 'the Service forwards to the picker\'s ext-proc port');
    const health = Number(flag(picker.args, '--grpc-health-port'));
    assert.equal(picker.readinessProbe.grpc.port, health);
    assert.equal(picker.livenessProbe.grpc.port, health);
    const sa = only(objs, 'ServiceAccount');
    assert.equal(eppPod.spec.serviceAccountName, sa.metadata.name);
    const binding = only(objs, 'RoleBinding');
    const role = only(objs, 'Role');
    assert.deepEqual(binding.subjects, [{ kind: 'ServiceAccount', name: sa.metadata.name }]);
    assert.equal(binding.roleRef.name, role.metadata.name);
    const may = (group: string, resource: string) =>
      role.rules.some((r: Obj) => r.apiGroups.includes(group) && r.resources.includes(resource) && ['get', 'watch', 'list'].every((v) => r.verbs.includes(v)));
    assert.ok(may('', 'pods') && may('inference.networking.k8s.io', 'inferencepools'), 'the picker may watch pods and its pool');

    // The picker's configuration: our metrics, at our path, with the LoRA-affinity scorer.
    const cfg = pickerConfig(eppConfigMap, epp);
    assert.equal(cfg.apiVersion, 'llm-d.ai/v1alpha1');
    assert.equal(cfg.kind, 'EndpointPickerConfig');
    const plugins = new Map<string, Obj>(cfg.plugins.map((p: Obj) => [p.name ?? p.type, p]));
    for (const prof of cfg.schedulingProfiles) for (const p of prof.plugins) assert.ok(plugins.has(p.pluginRef), `plugin ${p.pluginRef} is declared`);
    assert.ok(cfg.schedulingProfiles[0].plugins.some((p: Obj) => plugins.get(p.pluginRef).type === 'lora-affinity-scorer'), 'the default profile scores LoRA affinity');
    for (const s of cfg.dataLayer.sources) {
      assert.ok(plugins.has(s.pluginRef));
      for (const e of s.extractors) assert.ok(plugins.has(e.pluginRef));
    }
    const source = [...plugins.values()].find((p) => p.type === 'metrics-data-source');
    assert.equal(source.parameters.path, '/metrics');
    const extractor = [...plugins.values()].find((p) => p.type === 'core-metrics-extractor').parameters;
    const engine = extractor.engineConfigs.find((e: EngineConfig) => e.name === podLabels[extractor.engineLabelKey]);
    assert.ok(engine, `an engineConfig is named after the pods' ${extractor.engineLabelKey} label`);
  });

  test('the Dockerfiles build what the tree holds and serve on the manifests\' port', () => {
    const { servers } = manifests();
    const port = flag(servers.spec.template.spec.containers[0].args, '--port');
    for (const file of ['Dockerfile', 'Dockerfile.cuda']) {
      const text = readFileSync(join(ROOT, 'deploy', file), 'utf8');
      assert.ok(existsSync(join(ROOT, 'deploy', `${file}.dockerignore`)), `${file}.dockerignore keeps host builds out of the context`);
      assert.match(text, new RegExp(`^EXPOSE ${port}$`, 'm'));
      assert.match(text, /^ENTRYPOINT \["node", "bin\/expertweave\.js", "serve"\]$/m);
      assert.match(text, new RegExp(`^CMD \\["--host", "0\\.0\\.0\\.0", "--port", "${port}"`, 'm'));
      for (const [, src] of text.matchAll(/^COPY --from=build \/opt\/expertweave\/(\S+) /gm)) {
        const top = src.split('/')[0];
        assert.ok(['dist', 'node_modules', 'build'].includes(top) || existsSync(join(ROOT, top)), `${src} exists or is built`);
      }
      assert.match(text, /build\/Release\/expertweave\.node/, 'the addon where lib/engine/binding.ts looks');
    }
    assert.match(readFileSync(join(ROOT, 'deploy', 'Dockerfile.cuda'), 'utf8'), /EW_CUDA=ON/);
  });

  test('a daemon run with the manifest\'s arguments shows running and waiting adapters as the picker reads them', { skip: 'skip' in native ? native.skip : false }, async () => {
    const { servers, eppConfigMap, epp } = manifests();
    const container = servers.spec.template.spec.containers[0];
    const podLabels = servers.spec.template.metadata.labels;
    const cfg = pickerConfig(eppConfigMap, epp);
    const extractor = cfg.plugins.find((p: Obj) => p.type === 'core-metrics-extractor').parameters;
    const engine: EngineConfig = extractor.engineConfigs.find((e: EngineConfig) => e.name === podLabels[extractor.engineLabelKey]);
    const path: string = cfg.plugins.find((p: Obj) => p.type === 'metrics-data-source').parameters.path;

    // The pod's arguments, with this machine's paths, a free loopback port, one thread and
    // one running sequence (so that the other requests wait).
    const local: Record<string, string> = {
      '--host': '127.0.0.1',
      '--port': '0',
      '--model': join(ROOT, 'models', 'default'),
      '--adapters-dir': join(ROOT, 'adapters'),
      '--threads': '1',
      '--max-running': '1',
    };
    const args = (container.args as string[]).map((a, i, all) => local[all[i - 1]] ?? a.replace(/\$\((\w+)\)/g, () => 'test-token'));
    const maxResident = Number(flag(args, '--max-resident-adapters'));
    const child = spawn(process.execPath, [join(ROOT, 'bin', 'expertweave.js'), 'serve', ...args, '--device', 'cpu'], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stderr = '';
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    const exited = new Promise<number | null>((resolve) => child.on('exit', resolve));
    try {
      const base = await new Promise<string>((resolve, reject) => {
        let out = '';
        child.stdout.on('data', (d: Buffer) => {
          out += d.toString();
          const m = /listening on (http:\/\/[\d.]+:\d+)/.exec(out);
          if (m) resolve(m[1]);
        });
        void exited.then((code) => reject(new Error(`serve exited with ${code}: ${stderr}`)));
      });
      const read = async () => extractEndpointMetrics(await (await fetch(base + path, { headers: { connection: 'close' } })).text(), engine);

      const idle = await read();
      assert.deepEqual([idle.activeModels, idle.waitingModels, idle.runningRequestsSize, idle.waitingQueueSize], [new Set(), new Set(), 0, 0]);
      assert.equal(idle.maxActiveModels, maxResident, 'max_lora is the --max-resident-adapters of the manifest');
      assert.ok(idle.cacheBlockSize > 0 && idle.cacheNumBlocks > 0);
      const residency = parsePrometheus(await (await fetch(base + path, { headers: { connection: 'close' } })).text()).filter((s) => s.name === 'expertweave_adapter_residency');
      assert.deepEqual(residency.map((s) => s.labels.adapter).sort(), ['atbash', 'inc', 'rot13', 'shift'], '--adapters-dir registered the volume\'s adapters');

      // 'inc' on this prompt runs to its token limit (no EOS), twice in a row; the others queue.
      const client = await StreamClient.open(base.replace('http', 'ws') + '/v1/stream');
      const ends = new Map<string, Promise<Frame>>();
      const send = (id: string, adapter: string, prompt: string, maxTokens: number) => {
        client.send({ type: 'generate', id, adapter, prompt, max_tokens: maxTokens, temperature: 0 });
        ends.set(id, client.next((f) => f.id === id && (f.type === 'done' || f.type === 'error')));
      };
      send('a1', 'inc', 'zzzz', 240);
      send('a2', 'inc', 'zzzz', 240);
      send('b', 'rot13', 'rot13: hello\n=', 16);
      send('c', 'atbash', 'atbash: hello\n=', 16);
      let seen;
      for (let i = 0; i < 500; i++) {
        const m = await read();
        // (A sequence's KV blocks count once its first step has run.)
        if (m.waitingModels.has('rot13') && m.waitingModels.has('atbash') && m.kvCacheUsagePercent > 0) {
          seen = m;
          break;
        }
        assert.equal(client.frames.some((f) => f.id === 'a2' && f.type === 'done'), false, 'the scrape came before the long requests ended');
      }
      assert.ok(seen, 'the waiting adapters showed up');
      assert.deepEqual(seen.activeModels, new Set(['inc']));
      assert.deepEqual(seen.waitingModels, new Set(['inc', 'rot13', 'atbash']));
      assert.equal(seen.runningRequestsSize, 1);
      assert.equal(seen.waitingQueueSize, 3);
      assert.ok(seen.kvCacheUsagePercent > 0 && seen.kvCacheUsagePercent <= 1, `KV usage ${seen.kvCacheUsagePercent}`);
      assert.equal(loraAffinityScore(seen, 'inc'), 1.0, 'the picker prefers this pod for inc');

      for (const id of ends.keys()) client.send({ type: 'cancel', id });
      for (const end of ends.values()) assert.ok(['done', 'error'].includes((await end).type));
      const after = await read();
      assert.deepEqual([after.activeModels, after.waitingModels, after.runningRequestsSize, after.waitingQueueSize], [new Set(), new Set(), 0, 0]);
      client.close();
    } finally {
      child.kill('SIGTERM');
      assert.equal(await exited, 0, stderr);
    }
  });
});
