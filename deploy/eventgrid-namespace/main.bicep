// Key Vault -> Event Grid system topic -> Event Grid namespace topic, read by pull delivery.
//
// The vault's system topic forwards new secret versions (CloudEvents 1.0) with its own managed
// identity (EventGrid Data Sender) to a namespace topic; a queue-mode event subscription holds
// them for the application, which receives, acknowledges, releases and rejects over HTTP with its
// managed identity (EventGrid Data Receiver). No broker, no AMQP. The outputs are what the pull
// source takes (coming with issue 13): the namespace endpoint, the topic and the subscription.
//
// `azuredeploy.json` beside this file is the same template in ARM JSON, for the "Deploy to
// Azure" button; tests/deploy_templates.rs keeps the two in step.
//
// API versions: Microsoft.EventGrid 2025-02-15, the latest stable one
// (https://learn.microsoft.com/rest/api/eventgrid/controlplane/system-topic-event-subscriptions/create-or-update;
// namespaces, namespace topics and their event subscriptions:
// https://learn.microsoft.com/azure/templates/microsoft.eventgrid/namespaces/topics/eventsubscriptions),
// Microsoft.KeyVault 2024-11-01, Microsoft.Authorization/roleAssignments 2022-04-01.

@description('Where the new resources go.')
param location string = resourceGroup().location

@description('The existing Key Vault whose secrets the application caches (same resource group, RBAC permission model).')
param keyVaultName string

@description('The Event Grid system topic of the vault. A vault has at most one: if it has one already, give its name.')
param systemTopicName string = '${keyVaultName}-events'

@description('The system topic\'s event subscription that forwards the vault\'s events to the namespace topic.')
param eventSubscriptionName string = 'keyvault-invalidator'

@description('The event types forwarded; the library invalidates on SecretNewVersionCreated.')
param includedEventTypes array = [
  'Microsoft.KeyVault.SecretNewVersionCreated'
]

@description('Event Grid delivery attempts to the namespace topic (1-30).')
@minValue(1)
@maxValue(30)
param maxDeliveryAttempts int = 30

@description('Minutes Event Grid keeps retrying an event (1-1440).')
@minValue(1)
@maxValue(1440)
param eventTimeToLiveInMinutes int = 1440

@description('The Event Grid namespace to create.')
param eventGridNamespaceName string

@description('The namespace topic the events arrive on.')
param topicName string = 'keyvault-events'

@description('The queue-mode event subscription the application receives from (shared by its instances: each event goes to one of them).')
param subscriptionName string = 'keyvault-invalidator'

@description('How long a received event stays locked (60-300 s; the library\'s lock default, 60 s).')
@minValue(60)
@maxValue(300)
param receiveLockDurationInSeconds int = 60

@description('Deliveries before the event is dropped (1-10; the library\'s default, 10).')
@minValue(1)
@maxValue(10)
param maxDeliveryCount int = 10

@description('The principal (object) id of the application\'s managed identity.')
param principalId string

// Built-in role definition ids, the same in every tenant:
// https://learn.microsoft.com/azure/role-based-access-control/built-in-roles/integration
// (EventGrid Data Sender, EventGrid Data Receiver) and
// https://learn.microsoft.com/azure/role-based-access-control/built-in-roles/security
// (Key Vault Secrets User).
var eventGridDataSenderRoleId = 'd5a91429-5739-47e2-a06b-3470a27159e7'
var eventGridDataReceiverRoleId = '78cbd9e7-9798-4e2e-9b5a-547d9ebb31fb'
var keyVaultSecretsUserRoleId = '4633458b-17de-408a-b874-0445c86b69e6'

resource keyVault 'Microsoft.KeyVault/vaults@2024-11-01' existing = {
  name: keyVaultName
}

resource eventGridNamespace 'Microsoft.EventGrid/namespaces@2025-02-15' = {
  name: eventGridNamespaceName
  location: location
  sku: {
    name: 'Standard'
    capacity: 1
  }
  properties: {
    minimumTlsVersionAllowed: '1.2'
  }
}

resource namespaceTopic 'Microsoft.EventGrid/namespaces/topics@2025-02-15' = {
  parent: eventGridNamespace
  name: topicName
  properties: {
    publisherType: 'Custom'
    inputSchema: 'CloudEventSchemaV1_0'
    eventRetentionInDays: 1
  }
}

resource queueSubscription 'Microsoft.EventGrid/namespaces/topics/eventSubscriptions@2025-02-15' = {
  parent: namespaceTopic
  name: subscriptionName
  properties: {
    eventDeliverySchema: 'CloudEventSchemaV1_0'
    deliveryConfiguration: {
      deliveryMode: 'Queue'
      queue: {
        receiveLockDurationInSeconds: receiveLockDurationInSeconds
        maxDeliveryCount: maxDeliveryCount
        eventTimeToLive: 'P1D'
      }
    }
    filtersConfiguration: {
      includedEventTypes: includedEventTypes
    }
  }
}

resource systemTopic 'Microsoft.EventGrid/systemTopics@2025-02-15' = {
  name: systemTopicName
  location: location
  identity: {
    type: 'SystemAssigned'
  }
  properties: {
    source: keyVault.id
    topicType: 'Microsoft.KeyVault.vaults'
  }
}

// The system topic's identity publishes to the namespace topic.
resource topicSender 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(namespaceTopic.id, systemTopic.id, eventGridDataSenderRoleId)
  scope: namespaceTopic
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', eventGridDataSenderRoleId)
    principalId: systemTopic.identity.principalId
    principalType: 'ServicePrincipal'
  }
}

resource eventSubscription 'Microsoft.EventGrid/systemTopics/eventSubscriptions@2025-02-15' = {
  parent: systemTopic
  name: eventSubscriptionName
  properties: {
    eventDeliverySchema: 'CloudEventSchemaV1_0'
    filter: {
      includedEventTypes: includedEventTypes
    }
    retryPolicy: {
      maxDeliveryAttempts: maxDeliveryAttempts
      eventTimeToLiveInMinutes: eventTimeToLiveInMinutes
    }
    deliveryWithResourceIdentity: {
      identity: {
        type: 'SystemAssigned'
      }
      destination: {
        endpointType: 'NamespaceTopic'
        properties: {
          resourceId: namespaceTopic.id
        }
      }
    }
  }
  dependsOn: [
    topicSender
  ]
}

// The application's identity.
resource appReceiver 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(namespaceTopic.id, principalId, eventGridDataReceiverRoleId)
  scope: namespaceTopic
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', eventGridDataReceiverRoleId)
    principalId: principalId
    principalType: 'ServicePrincipal'
  }
}

resource appSecretsUser 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(keyVault.id, principalId, keyVaultSecretsUserRoleId)
  scope: keyVault
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', keyVaultSecretsUserRoleId)
    principalId: principalId
    principalType: 'ServicePrincipal'
  }
}

@description('The namespace\'s topic endpoint, https://{namespace}.{region}-1.eventgrid.azure.net.')
output namespaceEndpoint string = 'https://${eventGridNamespace.properties.topicsConfiguration.hostname}'

@description('The namespace topic.')
output topicName string = topicName

@description('The queue-mode event subscription.')
output subscriptionName string = subscriptionName

@description('The vault URI for the secret provider (KeyVaultProvider::new).')
output keyVaultUri string = keyVault.properties.vaultUri
