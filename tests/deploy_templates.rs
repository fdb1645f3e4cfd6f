//! The deployment templates in `deploy/`, checked without a network or a Bicep compiler.
//!
//! Each topology is committed twice: `main.bicep`, the source people read and change, and
//! `azuredeploy.json`, the ARM JSON the "Deploy to Azure" button needs (the portal takes no
//! Bicep). No Bicep compiler is at hand here (it is a .NET program shipped on NuGet and GitHub,
//! on none of the registries this project builds from), so these tests keep the two in step
//! themselves: every ARM JSON parses and is a deployment template; the Bicep file's parameters
//! (types, defaults, allowed values, limits), variables, resources (type, API version, name,
//! scope, condition) and outputs (names and types) are the ARM file's; every template forwards
//! `Microsoft.KeyVault.SecretNewVersionCreated` in the CloudEvents 1.0 schema and assigns exactly
//! the built-in roles it should; the defaults are the library's own; and `deploy/README.md`'s
//! buttons point at the committed JSON.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use serde_json::{json, Value};

const EVENT_TYPE: &str = "Microsoft.KeyVault.SecretNewVersionCreated";
const CLOUD_EVENTS: &str = "CloudEventSchemaV1_0";

// Built-in role definition ids, the same in every tenant (Microsoft's "Azure built-in roles"
// pages: https://learn.microsoft.com/azure/role-based-access-control/built-in-roles/integration,
// .../built-in-roles/security and .../built-in-roles/storage).
const SERVICE_BUS_DATA_OWNER: &str = "090c5cfd-751d-490a-894a-3ce6f1109419";
const SERVICE_BUS_DATA_RECEIVER: &str = "4f6d3b9b-027b-4f4c-9142-0e5a2a2247e0";
const SERVICE_BUS_DATA_SENDER: &str = "69a216fc-b8fb-44d8-bc22-1f3c2cd27a39";
const EVENT_GRID_DATA_SENDER: &str = "d5a91429-5739-47e2-a06b-3470a27159e7";
const EVENT_GRID_DATA_RECEIVER: &str = "78cbd9e7-9798-4e2e-9b5a-547d9ebb31fb";
const KEY_VAULT_SECRETS_USER: &str = "4633458b-17de-408a-b874-0445c86b69e6";
const STORAGE_BLOB_DATA_CONTRIBUTOR: &str = "ba92f5b4-2d11-453d-a403-e96b0029c9fe";

/// Who a role assignment is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Principal {
    /// The application's managed identity (the `principalId` parameter).
    App,
    /// The Event Grid system topic's own identity, which delivers.
    SystemTopic,
}

/// A role a template must assign: the role, to whom, on which resource type, and under which
/// condition (an ARM expression) if any.
struct Role {
    id: &'static str,
    principal: Principal,
    scope_type: &'static str,
    condition: Option<&'static str>,
}

struct Topology {
    dir: &'static str,
    roles: &'static [Role],
}

const SERVICEBUS: Topology = Topology {
    dir: "servicebus",
    roles: &[
        Role {
            id: SERVICE_BUS_DATA_OWNER,
            principal: Principal::App,
            scope_type: "Microsoft.ServiceBus/namespaces/topics",
            condition: Some("[equals(parameters('subscriptionMode'), 'perInstance')]"),
        },
        Role {
            id: SERVICE_BUS_DATA_RECEIVER,
            principal: Principal::App,
            scope_type: "Microsoft.ServiceBus/namespaces/topics/subscriptions",
            condition: Some("[equals(parameters('subscriptionMode'), 'shared')]"),
        },
        Role {
            id: KEY_VAULT_SECRETS_USER,
            principal: Principal::App,
            scope_type: "Microsoft.KeyVault/vaults",
            condition: None,
        },
        Role {
            id: SERVICE_BUS_DATA_SENDER,
            principal: Principal::SystemTopic,
            scope_type: "Microsoft.ServiceBus/namespaces/topics",
            condition: None,
        },
        Role {
            id: STORAGE_BLOB_DATA_CONTRIBUTOR,
            principal: Principal::SystemTopic,
            scope_type: "Microsoft.Storage/storageAccounts/blobServices/containers",
            condition: None,
        },
    ],
};

const EVENTGRID_NAMESPACE: Topology = Topology {
    dir: "eventgrid-namespace",
    roles: &[
        Role {
            id: EVENT_GRID_DATA_RECEIVER,
            principal: Principal::App,
            scope_type: "Microsoft.EventGrid/namespaces/topics",
            condition: None,
        },
        Role {
            id: KEY_VAULT_SECRETS_USER,
            principal: Principal::App,
            scope_type: "Microsoft.KeyVault/vaults",
            condition: None,
        },
        Role {
            id: EVENT_GRID_DATA_SENDER,
            principal: Principal::SystemTopic,
            scope_type: "Microsoft.EventGrid/namespaces/topics",
            condition: None,
        },
    ],
};

const WEBHOOK: Topology = Topology {
    dir: "webhook",
    roles: &[
        Role {
            id: KEY_VAULT_SECRETS_USER,
            principal: Principal::App,
            scope_type: "Microsoft.KeyVault/vaults",
            condition: None,
        },
        Role {
            id: STORAGE_BLOB_DATA_CONTRIBUTOR,
            principal: Principal::SystemTopic,
            scope_type: "Microsoft.Storage/storageAccounts/blobServices/containers",
            condition: None,
        },
    ],
};

const TOPOLOGIES: [&Topology; 3] = [&SERVICEBUS, &EVENTGRID_NAMESPACE, &WEBHOOK];

fn workspace_file(relative: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn arm(topology: &Topology) -> Value {
    let file = format!("deploy/{}/azuredeploy.json", topology.dir);
    serde_json::from_str(&workspace_file(&file)).unwrap_or_else(|e| panic!("{file}: {e}"))
}

fn bicep(topology: &Topology) -> Bicep {
    let file = format!("deploy/{}/main.bicep", topology.dir);
    Bicep::read(&workspace_file(&file)).unwrap_or_else(|e| panic!("{file}: {e}"))
}

fn resources(template: &Value) -> &Vec<Value> {
    template["resources"]
        .as_array()
        .expect("`resources` is an array")
}

fn resources_of_type<'a>(template: &'a Value, ty: &str) -> Vec<&'a Value> {
    resources(template)
        .iter()
        .filter(|r| r["type"] == ty)
        .collect()
}

fn one_of_type<'a>(template: &'a Value, ty: &str) -> &'a Value {
    let found = resources_of_type(template, ty);
    assert_eq!(found.len(), 1, "one {ty}");
    found[0]
}

fn default_of<'a>(template: &'a Value, parameter: &str) -> &'a Value {
    let value = &template["parameters"][parameter]["defaultValue"];
    assert!(!value.is_null(), "parameter `{parameter}` has a default");
    value
}

fn default_str<'a>(template: &'a Value, parameter: &str) -> &'a str {
    default_of(template, parameter)
        .as_str()
        .unwrap_or_else(|| panic!("`{parameter}`'s default is a string"))
}

fn default_u64(template: &Value, parameter: &str) -> u64 {
    default_of(template, parameter)
        .as_u64()
        .unwrap_or_else(|| panic!("`{parameter}`'s default is a number"))
}

// ---------------------------------------------------------------------------------------------
// The ARM JSON on its own
// ---------------------------------------------------------------------------------------------

#[test]
fn every_arm_template_parses_as_a_resource_group_deployment_template() {
    for topology in TOPOLOGIES {
        let template = arm(topology);
        let schema = template["$schema"].as_str().unwrap_or_default();
        assert!(
            schema.starts_with("https://schema.management.azure.com/schemas/")
                && schema.ends_with("/deploymentTemplate.json#"),
            "{}: a resource group deployment template, not {schema:?}",
            topology.dir
        );
        assert_eq!(template["contentVersion"], "1.0.0.0", "{}", topology.dir);
        assert!(!resources(&template).is_empty(), "{}", topology.dir);
        for resource in resources(&template) {
            for key in ["type", "apiVersion", "name"] {
                assert!(
                    resource[key].is_string(),
                    "{}: every resource has a {key}: {resource}",
                    topology.dir
                );
            }
            let version = resource["apiVersion"].as_str().unwrap();
            assert!(
                !version.contains("preview"),
                "{}: stable API versions only, not {version} for {}",
                topology.dir,
                resource["type"]
            );
        }
        for (name, parameter) in template["parameters"].as_object().unwrap() {
            assert!(
                parameter["metadata"]["description"].is_string(),
                "{}: parameter `{name}` says what it is",
                topology.dir
            );
        }
    }
}

#[test]
fn every_template_forwards_secret_new_version_created_in_cloudevents_with_retries() {
    for topology in TOPOLOGIES {
        let template = arm(topology);
        let dir = topology.dir;
        assert_eq!(
            default_of(&template, "includedEventTypes"),
            &json!([EVENT_TYPE]),
            "{dir}: the event types forwarded, by default"
        );
        assert!(
            workspace_file(&format!("deploy/{dir}/main.bicep")).contains(EVENT_TYPE),
            "{dir}: the Bicep names the event type"
        );

        let system_topic = one_of_type(&template, "Microsoft.EventGrid/systemTopics");
        assert_eq!(
            system_topic["properties"]["topicType"],
            "Microsoft.KeyVault.vaults"
        );
        assert_eq!(
            system_topic["properties"]["source"],
            "[resourceId('Microsoft.KeyVault/vaults', parameters('keyVaultName'))]",
            "{dir}: the system topic is the vault's"
        );
        assert_eq!(system_topic["identity"]["type"], "SystemAssigned", "{dir}");

        let subscription = one_of_type(
            &template,
            "Microsoft.EventGrid/systemTopics/eventSubscriptions",
        );
        let properties = &subscription["properties"];
        assert_eq!(properties["eventDeliverySchema"], CLOUD_EVENTS, "{dir}");
        assert_eq!(
            properties["filter"]["includedEventTypes"], "[parameters('includedEventTypes')]",
            "{dir}: the filter is the parameter"
        );
        assert_eq!(
            properties["retryPolicy"]["maxDeliveryAttempts"], "[parameters('maxDeliveryAttempts')]",
            "{dir}"
        );
        assert_eq!(
            properties["retryPolicy"]["eventTimeToLiveInMinutes"],
            "[parameters('eventTimeToLiveInMinutes')]",
            "{dir}"
        );
        // Event Grid's own defaults and limits: 30 attempts, 1440 minutes.
        assert_eq!(default_u64(&template, "maxDeliveryAttempts"), 30, "{dir}");
        assert_eq!(
            default_u64(&template, "eventTimeToLiveInMinutes"),
            1440,
            "{dir}"
        );
    }
}

/// The role definition ids an ARM expression names through a variable, and their values.
fn role_definition(template: &Value, assignment: &Value) -> String {
    let expression = assignment["properties"]["roleDefinitionId"]
        .as_str()
        .expect("roleDefinitionId is a string");
    let variable = expression
        .strip_prefix(
            "[subscriptionResourceId('Microsoft.Authorization/roleDefinitions', variables('",
        )
        .and_then(|rest| rest.strip_suffix("'))]"))
        .unwrap_or_else(|| panic!("a built-in role by its variable: {expression}"));
    template["variables"][variable]
        .as_str()
        .unwrap_or_else(|| panic!("variable `{variable}` holds the role id"))
        .to_owned()
}

#[test]
fn every_template_assigns_exactly_the_roles_it_should() {
    const APP: &str = "[parameters('principalId')]";
    const SYSTEM_TOPIC: &str = "[reference(resourceId('Microsoft.EventGrid/systemTopics', parameters('systemTopicName')), '2025-02-15', 'full').identity.principalId]";
    let every_role = [
        SERVICE_BUS_DATA_OWNER,
        SERVICE_BUS_DATA_RECEIVER,
        SERVICE_BUS_DATA_SENDER,
        EVENT_GRID_DATA_SENDER,
        EVENT_GRID_DATA_RECEIVER,
        KEY_VAULT_SECRETS_USER,
        STORAGE_BLOB_DATA_CONTRIBUTOR,
    ];
    for topology in TOPOLOGIES {
        let template = arm(topology);
        let dir = topology.dir;
        let assignments = resources_of_type(&template, "Microsoft.Authorization/roleAssignments");
        assert_eq!(
            assignments.len(),
            topology.roles.len(),
            "{dir}: one assignment per role"
        );
        for role in topology.roles {
            let matching: Vec<_> = assignments
                .iter()
                .filter(|a| role_definition(&template, a) == role.id)
                .filter(|a| {
                    let principal = &a["properties"]["principalId"];
                    match role.principal {
                        Principal::App => principal == APP,
                        Principal::SystemTopic => principal == SYSTEM_TOPIC,
                    }
                })
                .collect();
            assert_eq!(
                matching.len(),
                1,
                "{dir}: role {} for {:?}",
                role.id,
                role.principal
            );
            let assignment = matching[0];
            assert_eq!(
                assignment["properties"]["principalType"],
                "ServicePrincipal"
            );
            let scope = assignment["scope"].as_str().unwrap_or_default();
            let expected_scope = scope_pattern(role.scope_type);
            assert!(
                scope.starts_with(&format!("[format('{expected_scope}'")),
                "{dir}: role {} on a {}, not {scope}",
                role.id,
                role.scope_type
            );
            assert_eq!(
                assignment["condition"].as_str(),
                role.condition,
                "{dir}: role {}",
                role.id
            );
        }
        // No other built-in role id is named anywhere in either file.
        let text = workspace_file(&format!("deploy/{dir}/azuredeploy.json"))
            + &workspace_file(&format!("deploy/{dir}/main.bicep"));
        for id in every_role {
            let expected = topology.roles.iter().any(|r| r.id == id);
            assert_eq!(text.contains(id), expected, "{dir}: role id {id}");
        }
    }
}

/// `Microsoft.ServiceBus/namespaces/topics` -> `Microsoft.ServiceBus/namespaces/{0}/topics/{1}`:
/// the resource path a scope names, one name after each type segment.
fn scope_pattern(ty: &str) -> String {
    let mut segments = ty.split('/');
    let namespace = segments.next().expect("a provider namespace");
    let mut out = namespace.to_owned();
    for (i, segment) in segments.enumerate() {
        out.push_str(&format!("/{segment}/{{{i}}}"));
    }
    out
}

#[test]
fn servicebus_template_delivers_to_the_topic_with_its_identity_and_dead_letters_to_blob() {
    let template = arm(&SERVICEBUS);
    let subscription = one_of_type(
        &template,
        "Microsoft.EventGrid/systemTopics/eventSubscriptions",
    );
    let delivery = &subscription["properties"]["deliveryWithResourceIdentity"];
    assert_eq!(delivery["identity"]["type"], "SystemAssigned");
    assert_eq!(delivery["destination"]["endpointType"], "ServiceBusTopic");
    assert_eq!(
        delivery["destination"]["properties"]["resourceId"],
        "[resourceId('Microsoft.ServiceBus/namespaces/topics', parameters('serviceBusNamespaceName'), parameters('topicName'))]"
    );
    let dead_letter = &subscription["properties"]["deadLetterWithResourceIdentity"];
    assert_eq!(dead_letter["identity"]["type"], "SystemAssigned");
    assert_eq!(
        dead_letter["deadLetterDestination"]["endpointType"],
        "StorageBlob"
    );
    assert_eq!(
        dead_letter["deadLetterDestination"]["properties"]["blobContainerName"],
        "[parameters('deadLetterContainerName')]"
    );
    one_of_type(
        &template,
        "Microsoft.Storage/storageAccounts/blobServices/containers",
    );

    let namespace = one_of_type(&template, "Microsoft.ServiceBus/namespaces");
    assert_eq!(namespace["sku"]["name"], "[parameters('serviceBusSku')]");
    assert_eq!(
        template["parameters"]["serviceBusSku"]["allowedValues"],
        json!(["Standard", "Premium"]),
        "topics need Standard or Premium"
    );
    let shared = one_of_type(
        &template,
        "Microsoft.ServiceBus/namespaces/topics/subscriptions",
    );
    assert_eq!(
        shared["condition"], "[equals(parameters('subscriptionMode'), 'shared')]",
        "the shared subscription exists only in shared mode"
    );

    // The outputs are the registration's arguments.
    let outputs: BTreeSet<_> = template["outputs"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    for output in [
        "serviceBusNamespace",
        "topicName",
        "subscriptionPrefix",
        "subscriptionName",
        "keyVaultUri",
    ] {
        assert!(outputs.contains(output), "output {output}");
    }
    assert_eq!(
        template["outputs"]["topicName"]["value"],
        "[parameters('topicName')]"
    );
    assert_eq!(
        template["outputs"]["subscriptionPrefix"]["value"],
        "[parameters('subscriptionPrefix')]"
    );
}

#[test]
fn namespace_template_holds_events_in_a_queue_subscription() {
    let template = arm(&EVENTGRID_NAMESPACE);
    let topic = one_of_type(&template, "Microsoft.EventGrid/namespaces/topics");
    assert_eq!(topic["properties"]["inputSchema"], CLOUD_EVENTS);
    let queue = one_of_type(
        &template,
        "Microsoft.EventGrid/namespaces/topics/eventSubscriptions",
    );
    let properties = &queue["properties"];
    assert_eq!(properties["deliveryConfiguration"]["deliveryMode"], "Queue");
    assert_eq!(properties["eventDeliverySchema"], CLOUD_EVENTS);
    assert_eq!(
        properties["filtersConfiguration"]["includedEventTypes"],
        "[parameters('includedEventTypes')]"
    );
    let forward = one_of_type(
        &template,
        "Microsoft.EventGrid/systemTopics/eventSubscriptions",
    );
    let delivery = &forward["properties"]["deliveryWithResourceIdentity"];
    assert_eq!(delivery["destination"]["endpointType"], "NamespaceTopic");
    assert_eq!(
        delivery["destination"]["properties"]["resourceId"],
        "[resourceId('Microsoft.EventGrid/namespaces/topics', parameters('eventGridNamespaceName'), parameters('topicName'))]"
    );
    let outputs: BTreeSet<_> = template["outputs"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    let expected: BTreeSet<_> = [
        "namespaceEndpoint",
        "topicName",
        "subscriptionName",
        "keyVaultUri",
    ]
    .map(String::from)
    .into();
    assert_eq!(outputs, expected);
}

#[test]
fn webhook_template_pushes_batches_with_entra_id_delivery_auth() {
    let template = arm(&WEBHOOK);
    let subscription = one_of_type(
        &template,
        "Microsoft.EventGrid/systemTopics/eventSubscriptions",
    );
    let destination = &subscription["properties"]["destination"];
    assert_eq!(destination["endpointType"], "WebHook");
    let properties = &destination["properties"];
    assert_eq!(properties["endpointUrl"], "[parameters('webhookUrl')]");
    assert_eq!(
        template["parameters"]["webhookUrl"]["type"], "securestring",
        "a shared secret may ride in the URL"
    );
    assert_eq!(
        properties["azureActiveDirectoryTenantId"],
        "[parameters('entraTenantId')]"
    );
    assert_eq!(
        properties["azureActiveDirectoryApplicationIdOrUri"],
        "[parameters('entraApplicationIdOrUri')]"
    );
    assert_eq!(
        properties["maxEventsPerBatch"],
        "[parameters('maxEventsPerBatch')]"
    );
    assert_eq!(
        properties["preferredBatchSizeInKilobytes"],
        "[parameters('preferredBatchSizeInKilobytes')]"
    );
    // Within Event Grid's limits (1-5000 events, 1-1024 KB), and small enough that a batch,
    // applied all or none, is answered well within the 30 s Event Grid waits.
    let events = default_u64(&template, "maxEventsPerBatch");
    let kilobytes = default_u64(&template, "preferredBatchSizeInKilobytes");
    assert!((1..=100).contains(&events), "{events} events per batch");
    assert!((1..=1024).contains(&kilobytes), "{kilobytes} KB per batch");
    assert_eq!(
        template["parameters"]["maxEventsPerBatch"]["maxValue"],
        5000
    );
    assert_eq!(
        template["parameters"]["preferredBatchSizeInKilobytes"]["maxValue"],
        1024
    );
    assert!(
        subscription["properties"]["deliveryWithResourceIdentity"].is_null(),
        "a webhook authenticates through Entra app settings, not a delivery identity"
    );
    assert_eq!(
        subscription["properties"]["deadLetterWithResourceIdentity"]["deadLetterDestination"]
            ["endpointType"],
        "StorageBlob",
        "400 and 413 answers go to dead-letter"
    );
}

// ---------------------------------------------------------------------------------------------
// The library's defaults
// ---------------------------------------------------------------------------------------------

/// A `pub const NAME: &str = "...";` read from a library source file, so a template default
/// and the constant are compared even in a build without the transport's feature.
fn library_str_const(file: &str, name: &str) -> String {
    let source = workspace_file(file);
    let prefix = format!("pub const {name}: &str = \"");
    let start = source
        .find(&prefix)
        .unwrap_or_else(|| panic!("{file} declares {name}"))
        + prefix.len();
    let end = source[start..].find('"').expect("a closing quote") + start;
    source[start..end].to_owned()
}

#[test]
fn topic_and_subscription_defaults_are_the_librarys() {
    // The library's name for the events' topic is RabbitMQ's default exchange; the Service Bus
    // registration takes the topic as an argument.
    let topic = library_str_const("crates/rabbitmq/src/config.rs", "DEFAULT_EXCHANGE");
    let prefix = library_str_const(
        "crates/servicebus/src/config/mod.rs",
        "DEFAULT_SUBSCRIPTION_PREFIX",
    );
    #[cfg(feature = "rabbitmq")]
    assert_eq!(topic, keyvault_invalidator::rabbitmq::DEFAULT_EXCHANGE);
    #[cfg(feature = "servicebus")]
    assert_eq!(
        prefix,
        keyvault_invalidator::servicebus::DEFAULT_SUBSCRIPTION_PREFIX
    );
    for topology in [&SERVICEBUS, &EVENTGRID_NAMESPACE] {
        let template = arm(topology);
        assert_eq!(
            default_str(&template, "topicName"),
            topic,
            "{}",
            topology.dir
        );
        assert_eq!(
            default_str(&template, "subscriptionName"),
            prefix,
            "{}",
            topology.dir
        );
    }
    let template = arm(&SERVICEBUS);
    assert_eq!(default_str(&template, "subscriptionPrefix"), prefix);
    for topology in TOPOLOGIES {
        assert_eq!(
            default_str(&arm(topology), "eventSubscriptionName"),
            prefix,
            "{}",
            topology.dir
        );
    }
}

#[cfg(feature = "servicebus")]
#[test]
fn subscription_defaults_are_the_librarys_and_its_registration_takes_the_outputs() {
    use keyvault_invalidator::servicebus::{
        check_subscription_prefix, iso8601_duration, ManagedIdentity, ServiceBusConfig,
        SubscriptionMode, SubscriptionProperties, DEFAULT_SUBSCRIPTION_PREFIX,
    };

    let library = SubscriptionProperties::default();
    let template = arm(&SERVICEBUS);
    assert_eq!(
        default_str(&template, "autoDeleteOnIdle"),
        iso8601_duration(library.auto_delete_on_idle)
    );
    assert_eq!(
        default_str(&template, "lockDuration"),
        iso8601_duration(library.lock_duration)
    );
    assert_eq!(
        default_u64(&template, "maxDeliveryCount"),
        u64::from(library.max_delivery_count)
    );
    let pull = arm(&EVENTGRID_NAMESPACE);
    assert_eq!(
        default_u64(&pull, "receiveLockDurationInSeconds"),
        library.lock_duration.as_secs()
    );
    assert_eq!(
        default_u64(&pull, "maxDeliveryCount"),
        u64::from(library.max_delivery_count)
    );

    // The prefix's length limit is the registration's.
    let limit = template["parameters"]["subscriptionPrefix"]["maxLength"]
        .as_u64()
        .expect("subscriptionPrefix has a maxLength") as usize;
    assert!(check_subscription_prefix(&"p".repeat(limit)).is_ok());
    assert!(check_subscription_prefix(&"p".repeat(limit + 1)).is_err());

    // The outputs, as a deployment with the defaults gives them, go straight into the
    // registration (the host name comes from the namespace's endpoint).
    let namespace = "kvi-example.servicebus.windows.net";
    let config = ServiceBusConfig::managed_identity(namespace, ManagedIdentity::SystemAssigned)
        .unwrap()
        .topic(default_str(&template, "topicName"))
        .unwrap()
        .subscription_prefix(default_str(&template, "subscriptionPrefix"))
        .unwrap();
    assert_eq!(config.namespace(), Some(namespace));
    assert_eq!(config.topic_name(), Some("keyvault-events"));
    assert!(matches!(
        config.subscription(),
        SubscriptionMode::Automatic { prefix, .. } if prefix == DEFAULT_SUBSCRIPTION_PREFIX
    ));
    let shared = config
        .existing_subscription(default_str(&template, "subscriptionName"))
        .unwrap();
    assert!(matches!(
        shared.subscription(),
        SubscriptionMode::Existing { .. }
    ));
}

// ---------------------------------------------------------------------------------------------
// The README
// ---------------------------------------------------------------------------------------------

/// Percent-encodes everything but RFC 3986's unreserved characters, as JavaScript's
/// `encodeURIComponent` does for a URL: the form the portal's template link takes.
fn encode_uri_component(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn workspace_repository() -> String {
    let manifest = workspace_file("Cargo.toml");
    let line = manifest
        .lines()
        .find(|l| l.trim_start().starts_with("repository = \""))
        .expect("the workspace names its repository");
    line.split('"')
        .nth(1)
        .unwrap()
        .trim_end_matches('/')
        .to_owned()
}

#[test]
fn readme_buttons_and_commands_point_at_the_committed_templates() {
    let readme = workspace_file("deploy/README.md");
    let repository = workspace_repository();
    for topology in TOPOLOGIES {
        let dir = topology.dir;
        let raw = format!("{repository}/raw/main/deploy/{dir}/azuredeploy.json");
        let button = format!(
            "https://portal.azure.com/#create/Microsoft.Template/uri/{}",
            encode_uri_component(&raw)
        );
        assert!(readme.contains(&button), "{dir}: the button {button}");
        let command = format!("--template-file deploy/{dir}/main.bicep");
        assert!(
            readme.contains(&command),
            "{dir}: `az deployment group create {command}`"
        );
    }
    assert!(readme.contains("az deployment group create"));
    let root = workspace_file("README.md");
    assert!(
        root.contains("## Deploying to Azure") && root.contains("(deploy/README.md)"),
        "the root README links deploy/README.md"
    );
}

// ---------------------------------------------------------------------------------------------
// Bicep and ARM in step
// ---------------------------------------------------------------------------------------------

#[test]
fn bicep_and_arm_json_declare_the_same_parameters_variables_resources_and_outputs() {
    for topology in TOPOLOGIES {
        let dir = topology.dir;
        let bicep = bicep(topology);
        let arm = arm(topology);

        assert_same(
            dir,
            "parameters",
            bicep.parameters_as_arm(),
            arm_parameters(&arm),
        );
        assert_same(
            dir,
            "variables",
            bicep.variables_as_arm(),
            arm_variables(&arm),
        );
        let resources = |list: Vec<String>| list.into_iter().map(|r| (r, ())).collect();
        assert_same(
            dir,
            "resources (type@version, name, scope, condition)",
            resources(bicep.resources_as_arm()),
            resources(arm_resources(&arm)),
        );
        assert_same(dir, "outputs", bicep.outputs_as_arm(), arm_outputs(&arm));

        // An `existing` resource is not deployed, so ARM has no entry for it, only references.
        let text = workspace_file(&format!("deploy/{dir}/azuredeploy.json"));
        for resource in bicep.resources.iter().filter(|r| r.existing) {
            assert!(
                text.contains(&format!("resourceId('{}'", resource.ty)),
                "{dir}: ARM refers to the existing {}",
                resource.ty
            );
        }
    }
}

/// Fails naming what only one side has, and each entry the two sides disagree on.
fn assert_same<V: PartialEq + std::fmt::Debug>(
    dir: &str,
    what: &str,
    bicep: BTreeMap<String, V>,
    arm: BTreeMap<String, V>,
) {
    let mut problems = Vec::new();
    for (key, value) in &bicep {
        match arm.get(key) {
            None => problems.push(format!("only in main.bicep: {key} {value:?}")),
            Some(other) if other != value => problems.push(format!(
                "{key}: main.bicep says {value:?}, azuredeploy.json says {other:?}"
            )),
            Some(_) => {}
        }
    }
    for (key, value) in &arm {
        if !bicep.contains_key(key) {
            problems.push(format!("only in azuredeploy.json: {key} {value:?}"));
        }
    }
    assert!(
        problems.is_empty(),
        "deploy/{dir}: the {what} differ:\n  {}",
        problems.join("\n  ")
    );
}

fn arm_parameters(arm: &Value) -> BTreeMap<String, Value> {
    let keys = [
        "type",
        "defaultValue",
        "allowedValues",
        "minValue",
        "maxValue",
        "minLength",
        "maxLength",
    ];
    arm["parameters"]
        .as_object()
        .expect("parameters")
        .iter()
        .map(|(name, parameter)| {
            let mut kept: serde_json::Map<_, _> = keys
                .iter()
                .filter_map(|k| parameter.get(*k).map(|v| (k.to_string(), v.clone())))
                .collect();
            if let Some(description) = parameter["metadata"].get("description") {
                kept.insert("description".into(), description.clone());
            }
            (name.clone(), Value::Object(kept))
        })
        .collect()
}

fn arm_variables(arm: &Value) -> BTreeMap<String, Value> {
    arm["variables"]
        .as_object()
        .map(|vars| vars.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
        .unwrap_or_default()
}

fn arm_resources(arm: &Value) -> Vec<String> {
    let mut out: Vec<String> = resources(arm)
        .iter()
        .map(|r| {
            describe_resource(
                r["type"].as_str().unwrap(),
                r["apiVersion"].as_str().unwrap(),
                r["name"].as_str().unwrap(),
                r["scope"].as_str(),
                r["condition"].as_str(),
            )
        })
        .collect();
    out.sort();
    out
}

fn arm_outputs(arm: &Value) -> BTreeMap<String, String> {
    arm["outputs"]
        .as_object()
        .expect("outputs")
        .iter()
        .map(|(name, output)| (name.clone(), output["type"].as_str().unwrap().to_owned()))
        .collect()
}

fn describe_resource(
    ty: &str,
    version: &str,
    name: &str,
    scope: Option<&str>,
    condition: Option<&str>,
) -> String {
    let mut out = format!("{ty}@{version} name={name}");
    if let Some(scope) = scope {
        out.push_str(&format!(" scope={scope}"));
    }
    if let Some(condition) = condition {
        out.push_str(&format!(" condition={condition}"));
    }
    out
}

// ---------------------------------------------------------------------------------------------
// A reader of just the Bicep these templates use
// ---------------------------------------------------------------------------------------------
//
// No crate reads Bicep: the language has one implementation, Microsoft's compiler in .NET, and
// no Rust (or other non-.NET) parser is published. So this reads the subset the templates are
// written in, one statement per line, and refuses any line it does not understand (so a
// template that outgrows it fails here instead of being half-checked):
//
// - decorators `@description('...')`, `@secure()`, `@minValue(N)`, `@maxValue(N)`,
//   `@minLength(N)`, `@maxLength(N)`, and `@allowed([` ... `])` over several lines;
// - `param NAME TYPE` and `param NAME TYPE = DEFAULT` (an expression, or `[` and one item per
//   line up to `]`);
// - `var NAME = EXPRESSION`;
// - `resource SYMBOL 'TYPE@VERSION' [existing] = [if (CONDITION)] {` up to its closing `}`, of
//   whose body only the top-level `name:`, `parent:` and `scope:` are read;
// - `output NAME TYPE = EXPRESSION` (only the name and type are compared).
//
// Expressions: strings with `${...}` interpolation and `\` escapes, integers, `true`/`false`,
// identifiers, calls, `.member`, `[index]`, `==` and `?:`. To compare them with the ARM JSON
// they are written out as ARM expressions in the form Bicep gives them: a parameter becomes
// `parameters('x')`, a variable `variables('x')`, an interpolation `format('..{0}..', ...)`,
// `==` `equals(..)`, `symbol.id` `resourceId('TYPE', names...)`, a child's name
// `format('{0}/{1}', parent, child)` and a scope `format('Provider/type/{0}/child/{1}', ...)`.

#[derive(Debug)]
struct Bicep {
    parameters: Vec<Parameter>,
    variables: Vec<(String, Expr)>,
    resources: Vec<Resource>,
    outputs: Vec<(String, String)>,
}

#[derive(Debug)]
struct Parameter {
    name: String,
    ty: String,
    default: Option<Expr>,
    description: Option<String>,
    secure: bool,
    allowed: Option<Vec<Expr>>,
    limits: Vec<(String, i64)>,
}

#[derive(Debug)]
struct Resource {
    symbol: String,
    ty: String,
    version: String,
    existing: bool,
    condition: Option<Expr>,
    name: Option<Expr>,
    parent: Option<String>,
    scope: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
enum Expr {
    Str(Vec<Part>),
    Int(i64),
    Bool(bool),
    Array(Vec<Expr>),
    Ident(String),
    Call(String, Vec<Expr>),
    Member(Box<Expr>, String),
    Index(Box<Expr>, Box<Expr>),
    Equals(Box<Expr>, Box<Expr>),
    Ternary(Box<Expr>, Box<Expr>, Box<Expr>),
}

#[derive(Debug, Clone, PartialEq)]
enum Part {
    Text(String),
    Interpolated(Expr),
}

/// A line without its `//` comment (one outside a string literal).
fn strip_comment(line: &str) -> &str {
    let bytes = line.as_bytes();
    let mut in_string = false;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' if in_string => i += 1,
            b'\'' => in_string = !in_string,
            b'/' if !in_string && bytes.get(i + 1) == Some(&b'/') => return &line[..i],
            _ => {}
        }
        i += 1;
    }
    line
}

/// How much a line opens (`{`, `[`, `(`) minus what it closes, outside string literals.
fn depth_change(line: &str) -> i32 {
    let mut depth = 0;
    let mut in_string = false;
    let mut escaped = false;
    for c in line.chars() {
        if in_string {
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '\'') => in_string = false,
                _ => {}
            }
            continue;
        }
        match c {
            '\'' => in_string = true,
            '{' | '[' | '(' => depth += 1,
            '}' | ']' | ')' => depth -= 1,
            _ => {}
        }
    }
    depth
}

impl Bicep {
    fn read(source: &str) -> Result<Bicep, String> {
        let lines: Vec<&str> = source
            .lines()
            .map(|l| strip_comment(l).trim_end())
            .collect();
        let mut bicep = Bicep {
            parameters: Vec::new(),
            variables: Vec::new(),
            resources: Vec::new(),
            outputs: Vec::new(),
        };
        let mut decorators: Vec<String> = Vec::new();
        let mut i = 0;
        while i < lines.len() {
            let number = i + 1;
            let line = lines[i].trim();
            i += 1;
            if line.is_empty() {
                continue;
            }
            let at = |e: String| format!("line {number}: {e}: {line}");
            if line.starts_with('@') {
                let mut decorator = line.to_owned();
                let mut depth = depth_change(line);
                while depth > 0 {
                    let next = lines
                        .get(i)
                        .ok_or_else(|| at("unclosed decorator".into()))?;
                    i += 1;
                    depth += depth_change(next);
                    decorator.push('\n');
                    decorator.push_str(next.trim());
                }
                decorators.push(decorator);
            } else if let Some(rest) = line.strip_prefix("param ") {
                let (head, default) = match rest.split_once(" = ") {
                    Some((head, default)) => (head, Some(default)),
                    None => (rest, None),
                };
                let mut words = head.split_whitespace();
                let (Some(name), Some(ty), None) = (words.next(), words.next(), words.next())
                else {
                    return Err(at("expected `param NAME TYPE`".into()));
                };
                let default = match default {
                    None => None,
                    Some("[") => {
                        let mut items = Vec::new();
                        loop {
                            let next = lines
                                .get(i)
                                .ok_or_else(|| at("unclosed array".into()))?
                                .trim();
                            i += 1;
                            if next == "]" {
                                break;
                            }
                            items.push(parse_expression(next).map_err(at)?);
                        }
                        Some(Expr::Array(items))
                    }
                    Some(text) => Some(parse_expression(text).map_err(at)?),
                };
                let mut parameter = Parameter {
                    name: name.to_owned(),
                    ty: ty.to_owned(),
                    default,
                    description: None,
                    secure: false,
                    allowed: None,
                    limits: Vec::new(),
                };
                for decorator in decorators.drain(..) {
                    apply_decorator(&mut parameter, &decorator).map_err(at)?;
                }
                bicep.parameters.push(parameter);
            } else if let Some(rest) = line.strip_prefix("var ") {
                let (name, value) = rest
                    .split_once(" = ")
                    .ok_or_else(|| at("expected `var NAME = VALUE`".into()))?;
                bicep
                    .variables
                    .push((name.trim().to_owned(), parse_expression(value).map_err(at)?));
                decorators.clear();
            } else if let Some(rest) = line.strip_prefix("resource ") {
                let mut resource = parse_resource_header(rest).map_err(at)?;
                let mut depth = depth_change(line);
                while depth > 0 {
                    let next = lines.get(i).ok_or_else(|| at("unclosed resource".into()))?;
                    i += 1;
                    if depth == 1 {
                        let body = next.trim();
                        if let Some(value) = body.strip_prefix("name: ") {
                            resource.name = Some(parse_expression(value).map_err(at)?);
                        } else if let Some(value) = body.strip_prefix("parent: ") {
                            resource.parent = Some(value.trim().to_owned());
                        } else if let Some(value) = body.strip_prefix("scope: ") {
                            resource.scope = Some(value.trim().to_owned());
                        }
                    }
                    depth += depth_change(next);
                }
                if resource.name.is_none() {
                    return Err(at(format!("resource {} has no name", resource.symbol)));
                }
                bicep.resources.push(resource);
                decorators.clear();
            } else if let Some(rest) = line.strip_prefix("output ") {
                let (head, _value) = rest
                    .split_once(" = ")
                    .ok_or_else(|| at("expected `output NAME TYPE = VALUE`".into()))?;
                let mut words = head.split_whitespace();
                let (Some(name), Some(ty), None) = (words.next(), words.next(), words.next())
                else {
                    return Err(at("expected `output NAME TYPE`".into()));
                };
                bicep.outputs.push((name.to_owned(), ty.to_owned()));
                decorators.clear();
            } else {
                return Err(at("not a statement this reader knows".into()));
            }
        }
        Ok(bicep)
    }

    fn parameters_as_arm(&self) -> BTreeMap<String, Value> {
        self.parameters
            .iter()
            .map(|p| {
                let mut out = serde_json::Map::new();
                let ty = match (p.ty.as_str(), p.secure) {
                    ("string", true) => "securestring".to_owned(),
                    ("object", true) => "secureObject".to_owned(),
                    (ty, _) => ty.to_owned(),
                };
                out.insert("type".into(), Value::String(ty));
                if let Some(default) = &p.default {
                    out.insert("defaultValue".into(), self.value(default));
                }
                if let Some(allowed) = &p.allowed {
                    let values = allowed.iter().map(|e| self.value(e)).collect();
                    out.insert("allowedValues".into(), Value::Array(values));
                }
                for (limit, n) in &p.limits {
                    out.insert(limit.clone(), json!(n));
                }
                if let Some(description) = &p.description {
                    out.insert("description".into(), json!(description));
                }
                (p.name.clone(), Value::Object(out))
            })
            .collect()
    }

    fn variables_as_arm(&self) -> BTreeMap<String, Value> {
        self.variables
            .iter()
            .map(|(name, value)| (name.clone(), self.value(value)))
            .collect()
    }

    fn resources_as_arm(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .resources
            .iter()
            .filter(|r| !r.existing)
            .map(|r| {
                let scope = r.scope.as_deref().map(|symbol| self.scope(symbol));
                let condition = r.condition.as_ref().map(|c| format!("[{}]", self.emit(c)));
                describe_resource(
                    &r.ty,
                    &r.version,
                    &self.full_name(&r.symbol),
                    scope.as_deref(),
                    condition.as_deref(),
                )
            })
            .collect();
        out.sort();
        out
    }

    fn outputs_as_arm(&self) -> BTreeMap<String, String> {
        self.outputs.iter().cloned().collect()
    }

    fn resource(&self, symbol: &str) -> &Resource {
        self.resources
            .iter()
            .find(|r| r.symbol == symbol)
            .unwrap_or_else(|| panic!("no resource `{symbol}`"))
    }

    /// The names of a resource and its parents, outermost first, as ARM expressions.
    fn segments(&self, symbol: &str) -> Vec<String> {
        let resource = self.resource(symbol);
        let mut segments = match &resource.parent {
            Some(parent) => self.segments(parent),
            None => Vec::new(),
        };
        segments.push(self.emit(resource.name.as_ref().expect("a name")));
        segments
    }

    /// The `name` ARM gives a resource: a literal as it is, an expression in brackets, a child
    /// `format('{0}/{1}', parent, child)`.
    fn full_name(&self, symbol: &str) -> String {
        let resource = self.resource(symbol);
        if resource.parent.is_none() {
            return self.top_level(resource.name.as_ref().expect("a name"));
        }
        let segments = self.segments(symbol);
        let pattern: Vec<String> = (0..segments.len()).map(|i| format!("{{{i}}}")).collect();
        format!("[format('{}', {})]", pattern.join("/"), segments.join(", "))
    }

    fn scope(&self, symbol: &str) -> String {
        let resource = self.resource(symbol);
        format!(
            "[format('{}', {})]",
            scope_pattern(&resource.ty),
            self.segments(symbol).join(", ")
        )
    }

    /// A value as ARM JSON holds it: literals as JSON, expressions as `[...]` strings.
    fn value(&self, expr: &Expr) -> Value {
        match expr {
            Expr::Int(n) => json!(n),
            Expr::Bool(b) => json!(b),
            Expr::Array(items) => Value::Array(items.iter().map(|e| self.value(e)).collect()),
            other => Value::String(self.top_level(other)),
        }
    }

    fn top_level(&self, expr: &Expr) -> String {
        match literal(expr) {
            Some(text) => text,
            None => format!("[{}]", self.emit(expr)),
        }
    }

    /// An expression in ARM's expression language.
    fn emit(&self, expr: &Expr) -> String {
        match expr {
            Expr::Str(parts) => match literal(expr) {
                Some(text) => format!("'{}'", text.replace('\'', "''")),
                None => {
                    let mut pattern = String::new();
                    let mut arguments = Vec::new();
                    for part in parts {
                        match part {
                            Part::Text(text) => pattern.push_str(&text.replace('\'', "''")),
                            Part::Interpolated(e) => {
                                pattern.push_str(&format!("{{{}}}", arguments.len()));
                                arguments.push(self.emit(e));
                            }
                        }
                    }
                    format!("format('{pattern}', {})", arguments.join(", "))
                }
            },
            Expr::Int(n) => n.to_string(),
            Expr::Bool(b) => b.to_string(),
            Expr::Array(items) => {
                let items: Vec<_> = items.iter().map(|e| self.emit(e)).collect();
                format!("createArray({})", items.join(", "))
            }
            Expr::Ident(name) => {
                if self.parameters.iter().any(|p| &p.name == name) {
                    format!("parameters('{name}')")
                } else if self.variables.iter().any(|(v, _)| v == name) {
                    format!("variables('{name}')")
                } else {
                    panic!("`{name}` is neither a parameter nor a variable")
                }
            }
            Expr::Call(function, arguments) => {
                let arguments: Vec<_> = arguments.iter().map(|e| self.emit(e)).collect();
                format!("{function}({})", arguments.join(", "))
            }
            Expr::Member(target, member) => match target.as_ref() {
                Expr::Ident(symbol) if self.resources.iter().any(|r| &r.symbol == symbol) => {
                    assert_eq!(member, "id", "only `{symbol}.id` is written out here");
                    let resource = self.resource(symbol);
                    let mut arguments = vec![format!("'{}'", resource.ty)];
                    arguments.extend(self.segments(symbol));
                    format!("resourceId({})", arguments.join(", "))
                }
                _ => format!("{}.{member}", self.emit(target)),
            },
            Expr::Index(target, index) => format!("{}[{}]", self.emit(target), self.emit(index)),
            Expr::Equals(left, right) => {
                format!("equals({}, {})", self.emit(left), self.emit(right))
            }
            Expr::Ternary(condition, yes, no) => format!(
                "if({}, {}, {})",
                self.emit(condition),
                self.emit(yes),
                self.emit(no)
            ),
        }
    }
}

/// The text of a string without interpolation.
fn literal(expr: &Expr) -> Option<String> {
    match expr {
        Expr::Str(parts) => parts
            .iter()
            .map(|p| match p {
                Part::Text(t) => Some(t.as_str()),
                Part::Interpolated(_) => None,
            })
            .collect(),
        _ => None,
    }
}

fn apply_decorator(parameter: &mut Parameter, decorator: &str) -> Result<(), String> {
    let (name, arguments) = decorator
        .strip_prefix('@')
        .and_then(|d| d.split_once('('))
        .and_then(|(name, rest)| Some((name, rest.strip_suffix(')')?)))
        .ok_or_else(|| format!("unreadable decorator {decorator}"))?;
    match name {
        "description" => {
            let text = literal(&parse_expression(arguments)?)
                .ok_or_else(|| "@description takes a plain string".to_owned())?;
            parameter.description = Some(text);
        }
        "secure" => parameter.secure = true,
        "minValue" | "maxValue" | "minLength" | "maxLength" => {
            let n = arguments
                .trim()
                .parse()
                .map_err(|_| format!("@{name} takes a number"))?;
            parameter.limits.push((name.to_owned(), n));
        }
        "allowed" => {
            let items = arguments
                .trim()
                .strip_prefix('[')
                .and_then(|a| a.strip_suffix(']'))
                .ok_or_else(|| "@allowed takes an array".to_owned())?;
            let values = items
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(parse_expression)
                .collect::<Result<_, _>>()?;
            parameter.allowed = Some(values);
        }
        other => return Err(format!("decorator @{other} is not read here")),
    }
    Ok(())
}

fn parse_resource_header(rest: &str) -> Result<Resource, String> {
    let (symbol, rest) = rest
        .split_once(' ')
        .ok_or("expected `resource SYMBOL 'TYPE@VERSION'`")?;
    let rest = rest.strip_prefix('\'').ok_or("expected a quoted type")?;
    let (type_version, rest) = rest.split_once('\'').ok_or("unclosed type")?;
    let (ty, version) = type_version
        .split_once('@')
        .ok_or("expected TYPE@VERSION")?;
    let rest = rest.trim();
    let (existing, rest) = match rest.strip_prefix("existing") {
        Some(rest) => (true, rest.trim()),
        None => (false, rest),
    };
    let rest = rest
        .strip_prefix('=')
        .ok_or("expected `=`")?
        .trim()
        .strip_suffix('{')
        .ok_or("expected the body to open on the line")?
        .trim();
    let condition = match rest.strip_prefix("if") {
        None if rest.is_empty() => None,
        None => return Err(format!("unexpected `{rest}`")),
        Some(condition) => Some(parse_expression(condition.trim())?),
    };
    Ok(Resource {
        symbol: symbol.to_owned(),
        ty: ty.to_owned(),
        version: version.to_owned(),
        existing,
        condition,
        name: None,
        parent: None,
        scope: None,
    })
}

fn parse_expression(text: &str) -> Result<Expr, String> {
    let mut parser = Parser {
        chars: text.trim().chars().collect(),
        at: 0,
    };
    let expr = parser.ternary()?;
    parser.skip_spaces();
    if parser.at != parser.chars.len() {
        return Err(format!("unread text after an expression in `{text}`"));
    }
    Ok(expr)
}

struct Parser {
    chars: Vec<char>,
    at: usize,
}

impl Parser {
    fn peek(&self) -> Option<char> {
        self.chars.get(self.at).copied()
    }

    fn skip_spaces(&mut self) {
        while self.peek().is_some_and(char::is_whitespace) {
            self.at += 1;
        }
    }

    fn eat(&mut self, token: &str) -> bool {
        self.skip_spaces();
        let token: Vec<char> = token.chars().collect();
        if self.chars[self.at..].starts_with(&token) {
            self.at += token.len();
            true
        } else {
            false
        }
    }

    fn expect(&mut self, token: &str) -> Result<(), String> {
        if self.eat(token) {
            Ok(())
        } else {
            Err(format!("expected `{token}` at {}", self.at))
        }
    }

    fn ternary(&mut self) -> Result<Expr, String> {
        let condition = self.equality()?;
        if !self.eat("?") {
            return Ok(condition);
        }
        let yes = self.ternary()?;
        self.expect(":")?;
        let no = self.ternary()?;
        Ok(Expr::Ternary(
            Box::new(condition),
            Box::new(yes),
            Box::new(no),
        ))
    }

    fn equality(&mut self) -> Result<Expr, String> {
        let left = self.postfix()?;
        if self.eat("==") {
            let right = self.postfix()?;
            return Ok(Expr::Equals(Box::new(left), Box::new(right)));
        }
        Ok(left)
    }

    fn postfix(&mut self) -> Result<Expr, String> {
        let mut expr = self.primary()?;
        loop {
            if self.eat(".") {
                expr = Expr::Member(Box::new(expr), self.identifier()?);
            } else if self.eat("[") {
                let index = self.ternary()?;
                self.expect("]")?;
                expr = Expr::Index(Box::new(expr), Box::new(index));
            } else {
                return Ok(expr);
            }
        }
    }

    fn identifier(&mut self) -> Result<String, String> {
        self.skip_spaces();
        let start = self.at;
        while self
            .peek()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            self.at += 1;
        }
        if start == self.at {
            return Err(format!("expected a name at {start}"));
        }
        Ok(self.chars[start..self.at].iter().collect())
    }

    fn primary(&mut self) -> Result<Expr, String> {
        self.skip_spaces();
        match self.peek() {
            Some('\'') => self.string(),
            Some('(') => {
                self.at += 1;
                let inner = self.ternary()?;
                self.expect(")")?;
                Ok(inner)
            }
            Some(c) if c.is_ascii_digit() => {
                let start = self.at;
                while self.peek().is_some_and(|c| c.is_ascii_digit()) {
                    self.at += 1;
                }
                let digits: String = self.chars[start..self.at].iter().collect();
                Ok(Expr::Int(digits.parse().map_err(|e| format!("{e}"))?))
            }
            Some(_) => {
                let name = self.identifier()?;
                match name.as_str() {
                    "true" => return Ok(Expr::Bool(true)),
                    "false" => return Ok(Expr::Bool(false)),
                    _ => {}
                }
                if !self.eat("(") {
                    return Ok(Expr::Ident(name));
                }
                let mut arguments = Vec::new();
                if !self.eat(")") {
                    loop {
                        arguments.push(self.ternary()?);
                        if self.eat(")") {
                            break;
                        }
                        self.expect(",")?;
                    }
                }
                Ok(Expr::Call(name, arguments))
            }
            None => Err("expected an expression".into()),
        }
    }

    fn string(&mut self) -> Result<Expr, String> {
        self.at += 1; // the opening quote
        let mut parts = Vec::new();
        let mut text = String::new();
        loop {
            match self.peek() {
                None => return Err("unclosed string".into()),
                Some('\'') => {
                    self.at += 1;
                    break;
                }
                Some('\\') => {
                    let escaped = self.chars.get(self.at + 1).copied();
                    text.push(match escaped {
                        Some('n') => '\n',
                        Some('t') => '\t',
                        Some(c) => c,
                        None => return Err("a lone `\\`".into()),
                    });
                    self.at += 2;
                }
                Some('$') if self.chars.get(self.at + 1) == Some(&'{') => {
                    self.at += 2;
                    if !text.is_empty() {
                        parts.push(Part::Text(std::mem::take(&mut text)));
                    }
                    parts.push(Part::Interpolated(self.ternary()?));
                    self.expect("}")?;
                }
                Some(c) => {
                    text.push(c);
                    self.at += 1;
                }
            }
        }
        if !text.is_empty() || parts.is_empty() {
            parts.push(Part::Text(text));
        }
        Ok(Expr::Str(parts))
    }
}

#[test]
fn the_bicep_reader_reads_what_it_claims_and_refuses_the_rest() {
    let bicep = Bicep::read(
        "// a comment\n\
         @description('it\\'s a name') // trailing\n\
         @maxLength(5)\n\
         param name string = 'a${other}b'\n\
         param other string\n\
         @allowed([\n  'x'\n  'y'\n])\n\
         param mode string = 'x'\n\
         var id = 'https://example.invalid/x' // not a comment inside the string\n\
         resource parent 'A.B/c@2020-01-01' = {\n  name: name\n  properties: {\n    name: 'ignored'\n  }\n}\n\
         resource child 'A.B/c/d@2020-01-01' = if (mode == 'y') {\n  parent: parent\n  name: 'default'\n}\n\
         output out string = mode == 'x' ? name : ''\n",
    )
    .unwrap();
    let parameters = bicep.parameters_as_arm();
    assert_eq!(
        parameters["name"],
        json!({"type": "string", "defaultValue": "[format('a{0}b', parameters('other'))]",
               "maxLength": 5, "description": "it's a name"})
    );
    assert_eq!(parameters["mode"]["allowedValues"], json!(["x", "y"]));
    assert_eq!(bicep.variables_as_arm()["id"], "https://example.invalid/x");
    assert_eq!(
        bicep.resources_as_arm(),
        vec![
            "A.B/c/d@2020-01-01 name=[format('{0}/{1}', parameters('name'), 'default')] condition=[equals(parameters('mode'), 'y')]",
            "A.B/c@2020-01-01 name=[parameters('name')]",
        ]
    );
    assert_eq!(
        bicep.scope("child"),
        "[format('A.B/c/{0}/d/{1}', parameters('name'), 'default')]"
    );
    assert_eq!(bicep.outputs_as_arm()["out"], "string");

    assert!(Bicep::read("module m 'm.bicep' = {\n}\n").is_err());
    assert!(Bicep::read("@batchSize(1)\nparam p int\n").is_err());
    assert!(Bicep::read("param p string = 'unclosed\n").is_err());
}
