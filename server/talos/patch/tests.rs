use super::*;

/// A v1alpha1 config with something for every rule to act on.
const BASE: &str = r#"
version: v1alpha1
machine:
  type: controlplane
  certSANs: [10.0.0.10]
  install:
    disk: /dev/sda
    wipe: true
  nodeLabels:
    node.kubernetes.io/exclude-from-external-load-balancers: ""
  network:
    hostname: cp-1
    interfaces:
      - interface: eth0
        addresses: [10.0.0.2/24]
        mtu: 1500
        vlans:
          - vlanId: 100
            addresses: [10.100.0.2/24]
      - deviceSelector:
          hardwareAddr: "52:54:00:00:00:01"
        addresses: [10.1.0.2/24]
cluster:
  controlPlane:
    endpoint: https://10.0.0.10:6443
  network:
    podSubnets: [10.244.0.0/16]
    serviceSubnets: [10.96.0.0/12]
  apiServer:
    certSANs: [10.0.0.10]
    admissionControl:
      - name: PodSecurity
        configuration:
          apiVersion: pod-security.admission.config.k8s.io/v1alpha1
          kind: PodSecurityConfiguration
          defaults:
            enforce: baseline
          exemptions:
            namespaces: [kube-system]
"#;

/// BASE plus two multi-document kinds.
const MULTI: &str = r#"
version: v1alpha1
machine:
  network:
    hostname: cp-1
---
apiVersion: v1alpha1
kind: SideroLinkConfig
apiUrl: https://siderolink.example/join
---
apiVersion: v1alpha1
kind: ExtensionServiceConfig
name: nut-client
configFiles:
  - content: MONITOR ups
    mountPath: /usr/local/etc/nut/upsmon.conf
environment:
  - UPS_NAME=ups
"#;

/// Marks a pointer that must not resolve.
const ABSENT: &str = "<absent>";

struct Case {
    name: &'static str,
    /// The config as YAML documents; empty for BASE.
    config: &'static str,
    patches: &'static [&'static str],
    /// Pointers into the list of documents (`/0/machine/...`) with their expected JSON
    /// value, or a substring of the error.
    want: Result<&'static [(&'static str, &'static str)], &'static str>,
}

fn config_docs(text: &str) -> Vec<Value> {
    let text = if text.is_empty() { BASE } else { text };
    parse_documents(text)
        .expect("config parses")
        .into_iter()
        .map(|(_, doc)| doc)
        .collect()
}

fn run(case: &Case) -> Result<Vec<Value>, PatchError> {
    let mut docs = config_docs(case.config);
    let mut patches = Vec::new();
    for (i, text) in case.patches.iter().enumerate() {
        patches.push((format!("p{}", i + 1), Patch::parse(text)?));
    }
    apply_all(&mut docs, &patches)?;
    Ok(docs)
}

fn check(cases: &[Case]) {
    let mut failures = Vec::new();
    for case in cases {
        match (run(case), &case.want) {
            (Ok(docs), Ok(expect)) => {
                let all = Value::Array(docs);
                for (ptr, want) in *expect {
                    let got = all.pointer(ptr);
                    let ok = if *want == ABSENT {
                        got.is_none()
                    } else {
                        let want: Value = serde_json::from_str(want).expect("want is JSON");
                        got == Some(&want)
                    };
                    if !ok {
                        failures.push(format!(
                            "{}: {ptr} is {}, want {want}",
                            case.name,
                            got.map_or(ABSENT.to_string(), Value::to_string)
                        ));
                    }
                }
            }
            (Err(err), Err(want)) => {
                if !err.to_string().contains(want) {
                    failures.push(format!("{}: error '{err}', want '{want}'", case.name));
                }
            }
            (Ok(docs), Err(want)) => failures.push(format!(
                "{}: succeeded with {}, want error '{want}'",
                case.name,
                Value::Array(docs)
            )),
            (Err(err), Ok(_)) => failures.push(format!("{}: error '{err}'", case.name)),
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

#[test]
fn strategic_merge_follows_talos_rules() {
    check(&[
            Case {
                name: "maps merge recursively, new keys are added",
                config: "",
                patches: &["machine:\n  install:\n    image: installer:v1\n  kubelet:\n    extraArgs:\n      rotate-server-certificates: true\n"],
                want: Ok(&[
                    ("/0/machine/install/disk", r#""/dev/sda""#),
                    ("/0/machine/install/image", r#""installer:v1""#),
                    ("/0/machine/kubelet/extraArgs/rotate-server-certificates", "true"),
                    ("/0/machine/type", r#""controlplane""#),
                ]),
            },
            Case {
                name: "a non-zero scalar replaces",
                config: "",
                patches: &["cluster:\n  controlPlane:\n    endpoint: https://cp.example:6443\n"],
                want: Ok(&[("/0/cluster/controlPlane/endpoint", r#""https://cp.example:6443""#)]),
            },
            Case {
                name: "empty string and zero leave the target alone",
                config: "",
                patches: &["machine:\n  install:\n    disk: \"\"\n  network:\n    interfaces:\n      - interface: eth0\n        mtu: 0\n"],
                want: Ok(&[
                    ("/0/machine/install/disk", r#""/dev/sda""#),
                    ("/0/machine/network/interfaces/0/mtu", "1500"),
                ]),
            },
            Case {
                name: "false always replaces",
                config: "",
                patches: &["machine:\n  install:\n    wipe: false\n"],
                want: Ok(&[("/0/machine/install/wipe", "false")]),
            },
            Case {
                name: "true replaces false",
                config: "version: v1alpha1\nmachine:\n  install:\n    wipe: false\n",
                patches: &["machine:\n  install:\n    wipe: true\n"],
                want: Ok(&[("/0/machine/install/wipe", "true")]),
            },
            Case {
                name: "null in the patch changes nothing",
                config: "",
                patches: &["machine:\n  install: null\n  network:\n    hostname: ~\n"],
                want: Ok(&[
                    ("/0/machine/install/disk", r#""/dev/sda""#),
                    ("/0/machine/network/hostname", r#""cp-1""#),
                ]),
            },
            Case {
                name: "lists are appended",
                config: "",
                patches: &["machine:\n  certSANs: [cp.example, 10.0.0.11]\n"],
                want: Ok(&[("/0/machine/certSANs", r#"["10.0.0.10","cp.example","10.0.0.11"]"#)]),
            },
            Case {
                name: "podSubnets and serviceSubnets are replaced",
                config: "",
                patches: &["cluster:\n  network:\n    podSubnets: [10.32.0.0/12]\n    serviceSubnets: [10.112.0.0/12, fd00:10:96::/112]\n"],
                want: Ok(&[
                    ("/0/cluster/network/podSubnets", r#"["10.32.0.0/12"]"#),
                    ("/0/cluster/network/serviceSubnets", r#"["10.112.0.0/12","fd00:10:96::/112"]"#),
                ]),
            },
            Case {
                name: "an empty replace list empties the target, as in Talos",
                config: "",
                patches: &["cluster:\n  network:\n    podSubnets: []\n"],
                want: Ok(&[("/0/cluster/network/podSubnets", "[]")]),
            },
            Case {
                name: "auditPolicy is replaced, not merged",
                config: "version: v1alpha1\ncluster:\n  apiServer:\n    auditPolicy:\n      kind: Policy\n      rules:\n        - level: Metadata\n",
                patches: &["cluster:\n  apiServer:\n    auditPolicy:\n      apiVersion: audit.k8s.io/v1\n      rules:\n        - level: None\n"],
                want: Ok(&[
                    ("/0/cluster/apiServer/auditPolicy", r#"{"apiVersion":"audit.k8s.io/v1","rules":[{"level":"None"}]}"#),
                ]),
            },
            Case {
                name: "interfaces merge by interface name, new ones are appended",
                config: "",
                patches: &["machine:\n  network:\n    interfaces:\n      - interface: eth0\n        addresses: [10.0.0.3/24]\n        dhcp: false\n      - interface: eth2\n        dhcp: true\n"],
                want: Ok(&[
                    ("/0/machine/network/interfaces/0/addresses", r#"["10.0.0.2/24","10.0.0.3/24"]"#),
                    ("/0/machine/network/interfaces/0/dhcp", "false"),
                    ("/0/machine/network/interfaces/0/mtu", "1500"),
                    ("/0/machine/network/interfaces/2", r#"{"interface":"eth2","dhcp":true}"#),
                    ("/0/machine/network/interfaces/3", ABSENT),
                ]),
            },
            Case {
                name: "interfaces merge by identical deviceSelector",
                config: "",
                patches: &["machine:\n  network:\n    interfaces:\n      - deviceSelector:\n          hardwareAddr: \"52:54:00:00:00:01\"\n        addresses: [10.1.0.3/24]\n      - deviceSelector:\n          hardwareAddr: \"52:54:00:00:00:02\"\n        dhcp: true\n"],
                want: Ok(&[
                    ("/0/machine/network/interfaces/1/addresses", r#"["10.1.0.2/24","10.1.0.3/24"]"#),
                    ("/0/machine/network/interfaces/2/deviceSelector/hardwareAddr", r#""52:54:00:00:00:02""#),
                    ("/0/machine/network/interfaces/3", ABSENT),
                ]),
            },
            Case {
                name: "a deviceSelector that differs in another field is a new device",
                config: "",
                patches: &["machine:\n  network:\n    interfaces:\n      - deviceSelector:\n          hardwareAddr: \"52:54:00:00:00:01\"\n          driver: virtio_net\n        dhcp: true\n"],
                want: Ok(&[
                    ("/0/machine/network/interfaces/1/addresses", r#"["10.1.0.2/24"]"#),
                    ("/0/machine/network/interfaces/2/dhcp", "true"),
                ]),
            },
            Case {
                name: "vlans merge by vlanId inside the matched interface",
                config: "",
                patches: &["machine:\n  network:\n    interfaces:\n      - interface: eth0\n        vlans:\n          - vlanId: 100\n            addresses: [10.100.0.3/24]\n          - vlanId: 200\n            dhcp: true\n"],
                want: Ok(&[
                    ("/0/machine/network/interfaces/0/vlans/0/addresses", r#"["10.100.0.2/24","10.100.0.3/24"]"#),
                    ("/0/machine/network/interfaces/0/vlans/1", r#"{"vlanId":200,"dhcp":true}"#),
                ]),
            },
            Case {
                name: "admission plugins merge by name",
                config: "",
                patches: &["cluster:\n  apiServer:\n    admissionControl:\n      - name: PodSecurity\n        configuration:\n          defaults:\n            enforce: restricted\n          exemptions:\n            namespaces: [rook-ceph]\n      - name: EventRateLimit\n        configuration:\n          kind: Configuration\n"],
                want: Ok(&[
                    ("/0/cluster/apiServer/admissionControl/0/configuration/defaults/enforce", r#""restricted""#),
                    ("/0/cluster/apiServer/admissionControl/0/configuration/exemptions/namespaces", r#"["kube-system","rook-ceph"]"#),
                    ("/0/cluster/apiServer/admissionControl/0/configuration/kind", r#""PodSecurityConfiguration""#),
                    ("/0/cluster/apiServer/admissionControl/1/name", r#""EventRateLimit""#),
                ]),
            },
            Case {
                name: "a number into a string field becomes its text",
                config: "",
                patches: &["machine:\n  install:\n    disk: 7\n"],
                want: Ok(&[("/0/machine/install/disk", r#""7""#)]),
            },
            Case {
                name: "a scalar onto a mapping is an error",
                config: "",
                patches: &["machine:\n  install: /dev/sdb\n"],
                want: Err("patch 'p1': /machine/install: cannot merge a string into a mapping"),
            },
        ]);
}

#[test]
fn patch_delete_follows_talos_rules() {
    check(&[
            Case {
                name: "a key is deleted",
                config: "",
                patches: &["machine:\n  network:\n    hostname:\n      $patch: delete\n"],
                want: Ok(&[
                    ("/0/machine/network/hostname", ABSENT),
                    ("/0/machine/network/interfaces/0/interface", r#""eth0""#),
                ]),
            },
            Case {
                name: "a map key with a slash is deleted",
                config: "",
                patches: &["machine:\n  nodeLabels:\n    node.kubernetes.io/exclude-from-external-load-balancers:\n      $patch: delete\n"],
                want: Ok(&[("/0/machine/nodeLabels", "{}")]),
            },
            Case {
                name: "a list item is deleted by its selector, before the merge re-adds one",
                config: "",
                patches: &["machine:\n  network:\n    interfaces:\n      - interface: eth0\n        $patch: delete\n      - interface: eth0\n        dhcp: true\n"],
                want: Ok(&[
                    ("/0/machine/network/interfaces/0/deviceSelector/hardwareAddr", r#""52:54:00:00:00:01""#),
                    ("/0/machine/network/interfaces/1", r#"{"interface":"eth0","dhcp":true}"#),
                    ("/0/machine/network/interfaces/2", ABSENT),
                ]),
            },
            Case {
                name: "an admission plugin is deleted by name",
                config: "",
                patches: &["cluster:\n  apiServer:\n    admissionControl:\n      - name: PodSecurity\n        $patch: delete\n"],
                want: Ok(&[("/0/cluster/apiServer/admissionControl", "[]")]),
            },
            Case {
                name: "deletes and merges combine in one patch",
                config: "",
                patches: &["machine:\n  network:\n    hostname:\n      $patch: delete\n  install:\n    image: installer:v2\n"],
                want: Ok(&[
                    ("/0/machine/network/hostname", ABSENT),
                    ("/0/machine/install/image", r#""installer:v2""#),
                ]),
            },
            Case {
                name: "deleting an absent key fails",
                config: "",
                patches: &["machine:\n  install:\n    extraKernelArgs:\n      $patch: delete\n"],
                want: Err("patch 'p1': /machine/install/extraKernelArgs: $patch: delete: lookup failed"),
            },
            Case {
                name: "deleting under an absent parent fails",
                config: "",
                patches: &["machine:\n  kubelet:\n    extraArgs:\n      $patch: delete\n"],
                want: Err("/machine/kubelet/extraArgs: $patch: delete: lookup failed"),
            },
            Case {
                name: "deleting an absent list item fails",
                config: "",
                patches: &["machine:\n  network:\n    interfaces:\n      - interface: eth9\n        $patch: delete\n"],
                want: Err("lookup failed: no item with interface: eth9"),
            },
            Case {
                name: "an inner key of a list item cannot be deleted",
                config: "",
                patches: &["machine:\n  network:\n    interfaces:\n      - interface: eth0\n        mtu:\n          $patch: delete\n"],
                want: Err("/machine/network/interfaces/0/mtu: cannot delete an inner key of a list item"),
            },
            Case {
                name: "a list item in a nested list cannot be deleted",
                config: "",
                patches: &["machine:\n  network:\n    interfaces:\n      - interface: eth0\n        vlans:\n          - vlanId: \"100\"\n            $patch: delete\n"],
                want: Err("searching for complex paths in lists is not supported"),
            },
            Case {
                name: "a list item needs a selector key",
                config: "",
                patches: &["machine:\n  certSANs:\n    - $patch: delete\n"],
                want: Err("needs a key: value to select the item"),
            },
            Case {
                name: "only the delete directive is known",
                config: "",
                patches: &["machine:\n  certSANs:\n    $patch: replace\n"],
                want: Err("unsupported $patch: \"replace\""),
            },
            Case {
                name: "the v1alpha1 root cannot be deleted",
                config: "",
                patches: &["$patch: delete\n"],
                want: Err("missing apiVersion in document for which $patch: delete is used"),
            },
            Case {
                name: "a whole document is deleted by apiVersion and kind",
                config: MULTI,
                patches: &["apiVersion: v1alpha1\nkind: SideroLinkConfig\n$patch: delete\n"],
                want: Ok(&[
                    ("/1/kind", r#""ExtensionServiceConfig""#),
                    ("/2", ABSENT),
                ]),
            },
            Case {
                name: "an item of a named document is deleted",
                config: MULTI,
                patches: &["apiVersion: v1alpha1\nkind: ExtensionServiceConfig\nname: nut-client\nconfigFiles:\n  - content: MONITOR ups\n    $patch: delete\n"],
                want: Ok(&[("/2/configFiles", "[]"), ("/2/environment", r#"["UPS_NAME=ups"]"#)]),
            },
            Case {
                name: "deleting in a document the config lacks fails",
                config: "",
                patches: &["apiVersion: v1alpha1\nkind: SideroLinkConfig\n$patch: delete\n"],
                want: Err("lookup failed: the config has no document v1alpha1/SideroLinkConfig"),
            },
        ]);
}

#[test]
fn json_patch_operations_apply_to_the_v1alpha1_document() {
    check(&[
            Case {
                name: "add",
                config: "",
                patches: &["- op: add\n  path: /machine/certSANs/-\n  value: cp.example\n- op: add\n  path: /machine/kubelet\n  value: {extraArgs: {v: \"2\"}}\n"],
                want: Ok(&[
                    ("/0/machine/certSANs", r#"["10.0.0.10","cp.example"]"#),
                    ("/0/machine/kubelet/extraArgs/v", r#""2""#),
                ]),
            },
            Case {
                name: "remove",
                config: "",
                patches: &[r#"[{"op": "remove", "path": "/machine/network/hostname"}]"#],
                want: Ok(&[("/0/machine/network/hostname", ABSENT)]),
            },
            Case {
                name: "replace, which does not follow the replace-only-if-non-zero rule",
                config: "",
                patches: &["- op: replace\n  path: /machine/install/disk\n  value: \"\"\n"],
                want: Ok(&[("/0/machine/install/disk", r#""""#)]),
            },
            Case {
                name: "move",
                config: "",
                patches: &["- op: move\n  from: /machine/network/hostname\n  path: /machine/nodeLabels/hostname\n"],
                want: Ok(&[
                    ("/0/machine/network/hostname", ABSENT),
                    ("/0/machine/nodeLabels/hostname", r#""cp-1""#),
                ]),
            },
            Case {
                name: "copy",
                config: "",
                patches: &["- op: copy\n  from: /machine/certSANs\n  path: /cluster/apiServer/certSANs\n"],
                want: Ok(&[("/0/cluster/apiServer/certSANs", r#"["10.0.0.10"]"#)]),
            },
            Case {
                name: "a passing test lets the next operations run",
                config: "",
                patches: &["- op: test\n  path: /machine/type\n  value: controlplane\n- op: replace\n  path: /machine/type\n  value: worker\n"],
                want: Ok(&[("/0/machine/type", r#""worker""#)]),
            },
            Case {
                name: "a failing test fails the patch and names the operation",
                config: "",
                patches: &["- op: replace\n  path: /machine/type\n  value: worker\n- op: test\n  path: /machine/install/disk\n  value: /dev/nvme0n1\n"],
                want: Err("patch 'p1': /machine/install/disk: operation 1 (test) failed: the value differs"),
            },
            Case {
                name: "removing a missing path fails",
                config: "",
                patches: &["- op: remove\n  path: /machine/install/foo\n"],
                want: Err("patch 'p1': /machine/install/foo: operation 0 (remove) failed: the path does not exist"),
            },
            Case {
                name: "adding under a missing parent fails",
                config: "",
                patches: &["- op: add\n  path: /machine/kubelet/extraArgs/v\n  value: \"2\"\n"],
                want: Err("/machine/kubelet/extraArgs/v: operation 0 (add) failed: the parent of the path does not exist"),
            },
            Case {
                name: "moving from a missing path fails",
                config: "",
                patches: &["- op: move\n  from: /machine/nope\n  path: /machine/yes\n"],
                want: Err("operation 0 (move) failed: \"from\" path /machine/nope does not exist"),
            },
            Case {
                name: "a multi-document config refuses JSON patches, as in Talos",
                config: MULTI,
                patches: &["- op: add\n  path: /machine/certSANs\n  value: [a]\n"],
                want: Err("JSON patches are not supported for multi-document machine configuration"),
            },
        ]);
}

#[test]
fn multi_document_patches_merge_by_kind_and_name() {
    check(&[
            Case {
                name: "a new document kind is appended, the v1alpha1 part merged",
                config: "",
                patches: &["machine:\n  network:\n    hostname: cp-2\n---\napiVersion: v1alpha1\nkind: SideroLinkConfig\napiUrl: https://siderolink.example/join\n"],
                want: Ok(&[
                    ("/0/machine/network/hostname", r#""cp-2""#),
                    ("/1", r#"{"apiVersion":"v1alpha1","kind":"SideroLinkConfig","apiUrl":"https://siderolink.example/join"}"#),
                ]),
            },
            Case {
                name: "a document of the same kind and name is merged",
                config: MULTI,
                patches: &["apiVersion: v1alpha1\nkind: ExtensionServiceConfig\nname: nut-client\nconfigFiles:\n  - content: MONITOR ups2\n    mountPath: /usr/local/etc/nut/upsmon.conf\n  - content: extra\n    mountPath: /usr/local/etc/nut/extra.conf\nenvironment:\n  - UPS_HOST=10.0.0.5\n---\napiVersion: v1alpha1\nkind: SideroLinkConfig\napiUrl: https://other.example/join\n"],
                want: Ok(&[
                    ("/1/apiUrl", r#""https://other.example/join""#),
                    ("/2/configFiles/0/content", r#""MONITOR ups2""#),
                    ("/2/configFiles/1/mountPath", r#""/usr/local/etc/nut/extra.conf""#),
                    ("/2/environment", r#"["UPS_NAME=ups","UPS_HOST=10.0.0.5"]"#),
                    ("/3", ABSENT),
                ]),
            },
            Case {
                name: "another name is another document",
                config: MULTI,
                patches: &["apiVersion: v1alpha1\nkind: ExtensionServiceConfig\nname: tailscale\nenvironment: [TS_AUTHKEY=x]\n"],
                want: Ok(&[("/3/name", r#""tailscale""#), ("/2/name", r#""nut-client""#)]),
            },
            Case {
                name: "a patch that only names the version changes nothing",
                config: "",
                patches: &["version: v1alpha1\n"],
                want: Ok(&[("/0/machine/network/hostname", r#""cp-1""#), ("/1", ABSENT)]),
            },
        ]);
}

#[test]
fn later_patches_see_the_result_of_earlier_ones() {
    check(&[
            Case {
                name: "a JSON patch tests what a strategic patch added",
                config: "",
                patches: &[
                    "machine:\n  certSANs: [cp.example]\n",
                    "- op: test\n  path: /machine/certSANs/1\n  value: cp.example\n- op: replace\n  path: /machine/certSANs/1\n  value: cp2.example\n",
                    "machine:\n  network:\n    hostname:\n      $patch: delete\n",
                ],
                want: Ok(&[
                    ("/0/machine/certSANs", r#"["10.0.0.10","cp2.example"]"#),
                    ("/0/machine/network/hostname", ABSENT),
                ]),
            },
            Case {
                name: "a delete fails when an earlier patch removed the key",
                config: "",
                patches: &[
                    "- op: remove\n  path: /machine/network/hostname\n",
                    "machine:\n  network:\n    hostname:\n      $patch: delete\n",
                ],
                want: Err("patch 'p2': /machine/network/hostname: $patch: delete: lookup failed"),
            },
        ]);
}

#[test]
fn a_failing_patch_leaves_the_config_unchanged() {
    let mut docs = config_docs("");
    let before = docs.clone();
    let patches = vec![
        (
            "ok".to_string(),
            Patch::parse("machine:\n  certSANs: [a]\n").unwrap(),
        ),
        (
            "bad".to_string(),
            Patch::parse("- op: remove\n  path: /nope\n").unwrap(),
        ),
    ];
    let err = apply_all(&mut docs, &patches).unwrap_err();
    assert_eq!(
        err.to_string(),
        "patch 'bad': /nope: operation 0 (remove) failed: the path does not exist"
    );
    assert_eq!(docs, before);

    let err = apply(&mut docs, &Patch::parse("machine:\n  type: [x]\n").unwrap()).unwrap_err();
    assert_eq!(
        err.to_string(),
        "/machine/type: cannot merge a list into a string"
    );
    assert_eq!(docs, before);
}

#[test]
fn merging_keeps_key_order_and_appends_new_keys() {
    let mut docs = config_docs(
        "version: v1alpha1\nmachine:\n  type: worker\n  install:\n    disk: /dev/sda\n",
    );
    let patch =
        Patch::parse("machine:\n  kubelet: {image: k}\n  install:\n    wipe: true\n").unwrap();
    apply(&mut docs, &patch).unwrap();
    assert_eq!(
        serde_json::to_string(&docs[0]).unwrap(),
        r#"{"version":"v1alpha1","machine":{"type":"worker","install":{"disk":"/dev/sda","wipe":true},"kubelet":{"image":"k"}}}"#
    );
}

#[test]
fn parse_tells_json_patches_from_strategic_patches() {
    let cases: &[(&str, &str, usize)] = &[
        (
            "YAML list of operations",
            "- op: add\n  path: /a\n  value: 1\n",
            1,
        ),
        (
            "JSON list of operations",
            r#"[{"op":"remove","path":"/a"},{"op":"test","path":"/b","value":null}]"#,
            2,
        ),
        ("empty JSON list", "[]", 0),
    ];
    for (name, text, ops) in cases {
        match Patch::parse(text) {
            Ok(Patch::JsonPatch(patch)) => assert_eq!(patch.0.len(), *ops, "{name}"),
            other => panic!("{name}: {other:?}"),
        }
    }
    let cases: &[(&str, &str, usize)] = &[
        ("YAML mapping", "machine:\n  network:\n    hostname: a\n", 1),
        (
            "JSON object",
            r#"{"machine": {"network": {"hostname": "a"}}}"#,
            1,
        ),
        (
            "two documents",
            "machine: {}\n---\napiVersion: v1alpha1\nkind: SideroLinkConfig\n",
            2,
        ),
        ("empty documents are skipped", "---\nmachine: {}\n---\n", 1),
        (
            "merge keys resolve",
            "x: &n {hostname: a}\nmachine:\n  network:\n    <<: *n\n",
            1,
        ),
    ];
    for (name, text, count) in cases {
        match Patch::parse(text) {
            Ok(Patch::StrategicMerge(docs)) => assert_eq!(docs.len(), *count, "{name}"),
            other => panic!("{name}: {other:?}"),
        }
    }
}

#[test]
fn parse_errors_say_what_is_wrong() {
    let cases: &[(&str, &str, &str)] = &[
            ("invalid YAML", "machine:\n  network:\n    hostname: a\n   bad: [\n", "invalid YAML at line 4, column"),
            ("tab indentation", "machine:\n\tnetwork: {}\n", "invalid YAML at line 2, column 1"),
            ("broken JSON list", "[{\"op\": \"add\",\n \"path\": \"/a\"", "invalid JSON at line 2, column 13"),
            ("JSON-looking YAML is read as YAML", "[{\"op\": \"add\", \"path\": }]", "JSON patch operation 0: invalid type: null"),
            ("duplicate key", "machine: {}\nmachine: {}\n", "duplicate entry with key \"machine\""),
            ("a scalar document", "just some text\n", "document 1 of the patch is a string"),
            ("a scalar second document", "machine: {}\n---\n42\n", "document 2 of the patch is a number"),
            ("a list that is not operations", "- hostname: a\n", "JSON patch operation 0: missing field `op`"),
            ("a list of scalars", "- a\n- b\n", "JSON patch operation 0: expected a mapping with 'op' and 'path', found a string"),
            ("an unknown operation", "- op: add\n  path: /a\n  value: 1\n- op: frobnicate\n  path: /a\n", "JSON patch operation 1: unknown variant `frobnicate`"),
            ("an operation without its value", "- op: add\n  path: /a\n", "JSON patch operation 0: missing field `value`"),
            ("a JSON patch beside a mapping", "- op: remove\n  path: /a\n---\nmachine: {}\n", "must be the only document"),
            ("nothing", "# only a comment\n", "patch has no documents"),
            ("no kind and no v1alpha1 key", "hostname: a\n", "document 1 of the patch: missing kind"),
            ("a kind without apiVersion", "kind: SideroLinkConfig\napiUrl: x\n", "kind SideroLinkConfig has no apiVersion"),
            ("the same document twice", "apiVersion: v1alpha1\nkind: SideroLinkConfig\n---\napiVersion: v1alpha1\nkind: SideroLinkConfig\n", "document v1alpha1/SideroLinkConfig appears twice"),
            ("a delete with only a kind", "kind: SideroLinkConfig\napiUrl:\n  $patch: delete\n", "kind and apiVersion must be both set"),
        ];
    for (name, text, want) in cases {
        match Patch::parse(text) {
            Err(err) => assert!(
                err.to_string().contains(want),
                "{name}: '{err}' lacks '{want}'"
            ),
            Ok(patch) => panic!("{name}: parsed as {patch:?}"),
        }
    }
}

#[test]
fn syntax_errors_carry_line_and_column() {
    let err = Patch::parse("machine:\n  network: {hostname: a\n").unwrap_err();
    match err {
        PatchError::Syntax {
            format,
            line,
            column,
            message,
        } => {
            assert_eq!(format, "YAML");
            assert!(line >= 2, "line {line}");
            assert!(column > 0, "column {column}");
            let repeated = format!(" at line {line} column {column}");
            assert!(
                !message.contains(&repeated),
                "location repeated in '{message}'"
            );
        }
        other => panic!("{other:?}"),
    }
}
