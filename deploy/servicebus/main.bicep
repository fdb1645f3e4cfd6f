// Key Vault -> Event Grid system topic -> Service Bus topic: the original library's topology.
//
// An existing Key Vault (RBAC permission model) in this resource group announces new secret
// versions through an Event Grid system topic, which delivers them in the CloudEvents 1.0 schema
// to a Service Bus topic with its own managed identity; what Event Grid cannot deliver goes to a
// blob container. The application's managed identity gets what the library needs: Azure Service
// Bus Data Owner on the topic (per-instance subscriptions, the library's default) or Azure
// Service Bus Data Receiver on a shared subscription this template creates, and Key Vault
// Secrets User on the vault. The outputs are the arguments of the registration:
//
//   ServiceBusConfig::managed_identity(serviceBusNamespace, ManagedIdentity::SystemAssigned)?
//       .topic(topicName)?
//       .subscription_prefix(subscriptionPrefix)?      // or .existing_subscription(subscriptionName)?
//
// `azuredeploy.json` beside this file is the same template in ARM JSON, for the "Deploy to
// Azure" button; tests/deploy_templates.rs keeps the two in step.
//
// API versions (the latest stable ones, from Microsoft's template reference,
// https://learn.microsoft.com/azure/templates/): Microsoft.EventGrid 2025-02-15
// (https://learn.microsoft.com/rest/api/eventgrid/controlplane/system-topic-event-subscriptions/create-or-update),
// Microsoft.ServiceBus 2024-01-01
// (https://learn.microsoft.com/azure/templates/microsoft.servicebus/namespaces/topics/subscriptions),
// Microsoft.Storage 2025-06-01
// (https://learn.microsoft.com/azure/templates/microsoft.storage/2025-06-01/storageaccounts/blobservices/containers),
// Microsoft.KeyVault 2024-11-01, Microsoft.Authorization/roleAssignments 2022-04-01.

@description('Where the new resources go.')
param location string = resourceGroup().location

@description('The existing Key Vault whose secrets the application caches (same resource group, RBAC permission model).')
param keyVaultName string

@description('The Event Grid system topic of the vault. A vault has at most one: if it has one already, give its name.')
param systemTopicName string = '${keyVaultName}-events'

@description('The Event Grid subscription that forwards the vault\'s events to the topic.')
param eventSubscriptionName string = 'keyvault-invalidator'

@description('The event types forwarded; the library invalidates on SecretNewVersionCreated.')
param includedEventTypes array = [
  'Microsoft.KeyVault.SecretNewVersionCreated'
]

@description('Event Grid delivery attempts before an event is dead-lettered (1-30).')
@minValue(1)
@maxValue(30)
param maxDeliveryAttempts int = 30

@description('Minutes Event Grid keeps retrying an event (1-1440).')
@minValue(1)
@maxValue(1440)
param eventTimeToLiveInMinutes int = 1440

@description('The Service Bus namespace to create (globally unique).')
param serviceBusNamespaceName string

@description('Its tier: topics need Standard or Premium.')
@allowed([
  'Standard'
  'Premium'
])
param serviceBusSku string = 'Standard'

@description('The topic the events arrive on.')
param topicName string = 'keyvault-events'

@description('perInstance: each instance creates its own subscription {prefix}-{unique} (Data Owner on the topic). shared: one subscription created here for every instance (Data Receiver on it).')
@allowed([
  'perInstance'
  'shared'
])
param subscriptionMode string = 'perInstance'

@description('The prefix of the per-instance subscriptions (the library\'s default; at most 37 characters).')
@maxLength(37)
param subscriptionPrefix string = 'keyvault-invalidator'

@description('The shared subscription (subscriptionMode shared).')
param subscriptionName string = 'keyvault-invalidator'

@description('How long a per-instance subscription may go without a receiver before Service Bus deletes it: the library\'s SubscriptionProperties default, passed on as an output.')
param autoDeleteOnIdle string = 'PT1H'

@description('Lock duration of the shared subscription (the library\'s default for the subscriptions it creates).')
param lockDuration string = 'PT1M'

@description('Deliveries before Service Bus dead-letters a message of the shared subscription (the library\'s default).')
@minValue(1)
param maxDeliveryCount int = 10

@description('The storage account that receives what Event Grid could not deliver (globally unique, 3-24 lowercase letters and digits).')
param deadLetterStorageAccountName string = 'kvi${uniqueString(resourceGroup().id)}'

@description('Its blob container for dead-lettered events.')
param deadLetterContainerName string = 'keyvault-events-dead-letter'

@description('The principal (object) id of the application\'s managed identity.')
param principalId string

// Built-in role definition ids, the same in every tenant:
// https://learn.microsoft.com/azure/role-based-access-control/built-in-roles/integration
// (Azure Service Bus Data Owner, Data Receiver, Data Sender),
// https://learn.microsoft.com/azure/role-based-access-control/built-in-roles/security
// (Key Vault Secrets User) and
// https://learn.microsoft.com/azure/role-based-access-control/built-in-roles/storage
// (Storage Blob Data Contributor).
var serviceBusDataOwnerRoleId = '090c5cfd-751d-490a-894a-3ce6f1109419'
var serviceBusDataReceiverRoleId = '4f6d3b9b-027b-4f4c-9142-0e5a2a2247e0'
var serviceBusDataSenderRoleId = '69a216fc-b8fb-44d8-bc22-1f3c2cd27a39'
var keyVaultSecretsUserRoleId = '4633458b-17de-408a-b874-0445c86b69e6'
var storageBlobDataContributorRoleId = 'ba92f5b4-2d11-453d-a403-e96b0029c9fe'

resource keyVault 'Microsoft.KeyVault/vaults@2024-11-01' existing = {
  name: keyVaultName
}

resource serviceBusNamespace 'Microsoft.ServiceBus/namespaces@2024-01-01' = {
  name: serviceBusNamespaceName
  location: location
  sku: {
    name: serviceBusSku
    tier: serviceBusSku
  }
  properties: {
    minimumTlsVersion: '1.2'
  }
}

resource topic 'Microsoft.ServiceBus/namespaces/topics@2024-01-01' = {
  parent: serviceBusNamespace
  name: topicName
  properties: {}
}

resource sharedSubscription 'Microsoft.ServiceBus/namespaces/topics/subscriptions@2024-01-01' = if (subscriptionMode == 'shared') {
  parent: topic
  name: subscriptionName
  properties: {
    lockDuration: lockDuration
    maxDeliveryCount: maxDeliveryCount
    deadLetteringOnMessageExpiration: true
    requiresSession: false
  }
}

resource deadLetterStorage 'Microsoft.Storage/storageAccounts@2025-06-01' = {
  name: deadLetterStorageAccountName
  location: location
  sku: {
    name: 'Standard_LRS'
  }
  kind: 'StorageV2'
  properties: {
    minimumTlsVersion: 'TLS1_2'
    allowBlobPublicAccess: false
    supportsHttpsTrafficOnly: true
  }
}

resource blobService 'Microsoft.Storage/storageAccounts/blobServices@2025-06-01' = {
  parent: deadLetterStorage
  name: 'default'
}

resource deadLetterContainer 'Microsoft.Storage/storageAccounts/blobServices/containers@2025-06-01' = {
  parent: blobService
  name: deadLetterContainerName
  properties: {
    publicAccess: 'None'
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

// The system topic's identity sends to the topic and writes dead letters.
resource topicSender 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(topic.id, systemTopic.id, serviceBusDataSenderRoleId)
  scope: topic
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', serviceBusDataSenderRoleId)
    principalId: systemTopic.identity.principalId
    principalType: 'ServicePrincipal'
  }
}

resource deadLetterWriter 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(deadLetterContainer.id, systemTopic.id, storageBlobDataContributorRoleId)
  scope: deadLetterContainer
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', storageBlobDataContributorRoleId)
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
        endpointType: 'ServiceBusTopic'
        properties: {
          resourceId: topic.id
        }
      }
    }
    deadLetterWithResourceIdentity: {
      identity: {
        type: 'SystemAssigned'
      }
      deadLetterDestination: {
        endpointType: 'StorageBlob'
        properties: {
          resourceId: deadLetterStorage.id
          blobContainerName: deadLetterContainerName
        }
      }
    }
  }
  dependsOn: [
    topicSender
    deadLetterWriter
  ]
}

// The application's identity.
resource appTopicOwner 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (subscriptionMode == 'perInstance') {
  name: guid(topic.id, principalId, serviceBusDataOwnerRoleId)
  scope: topic
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', serviceBusDataOwnerRoleId)
    principalId: principalId
    principalType: 'ServicePrincipal'
  }
}

resource appSubscriptionReceiver 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (subscriptionMode == 'shared') {
  name: guid(sharedSubscription.id, principalId, serviceBusDataReceiverRoleId)
  scope: sharedSubscription
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', serviceBusDataReceiverRoleId)
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

@description('ServiceBusConfig::managed_identity(serviceBusNamespace, ..): the namespace\'s host name.')
output serviceBusNamespace string = split(split(serviceBusNamespace.properties.serviceBusEndpoint, '/')[2], ':')[0]

@description('.topic(topicName)')
output topicName string = topicName

@description('.subscription_prefix(subscriptionPrefix) in perInstance mode.')
output subscriptionPrefix string = subscriptionPrefix

@description('.existing_subscription(subscriptionName) in shared mode; empty in perInstance mode.')
output subscriptionName string = subscriptionMode == 'shared' ? subscriptionName : ''

@description('SubscriptionProperties::with_auto_delete_on_idle, only when it differs from the library\'s default (PT1H).')
output autoDeleteOnIdle string = autoDeleteOnIdle

@description('The vault URI for the secret provider (KeyVaultProvider::new).')
output keyVaultUri string = keyVault.properties.vaultUri
