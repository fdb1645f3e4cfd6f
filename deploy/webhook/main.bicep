// Key Vault -> Event Grid system topic -> the application's HTTPS webhook, with Microsoft Entra
// ID delivery authentication.
//
// The vault's system topic pushes new secret versions (CloudEvents 1.0, batched) to the webhook
// with a bearer token Event Grid obtains from Microsoft Entra ID for the webhook's app
// registration (`azureActiveDirectoryTenantId` and `azureActiveDirectoryApplicationIdOrUri` on
// the WebHook destination: Event Grid's "secure webhook delivery"; managed-identity delivery is
// for Service Bus, Event Hubs and storage destinations, not webhooks). The webhook checks the
// token's signature, issuer, audience, expiry and the AzureEventGridSecureWebhookSubscriber
// role. What is refused with 400 or 413, or never delivered, goes to a blob container. The
// outputs are what the webhook source takes (coming with issue 13) and the vault URI.
//
// Creating the event subscription makes Event Grid run the CloudEvents abuse-protection
// handshake (an OPTIONS request): the webhook must be up before this is deployed.
//
// `azuredeploy.json` beside this file is the same template in ARM JSON, for the "Deploy to
// Azure" button; tests/deploy_templates.rs keeps the two in step.
//
// API versions: Microsoft.EventGrid 2025-02-15, the latest stable one
// (https://learn.microsoft.com/rest/api/eventgrid/controlplane/system-topic-event-subscriptions/create-or-update),
// Microsoft.Storage 2025-06-01
// (https://learn.microsoft.com/azure/templates/microsoft.storage/2025-06-01/storageaccounts/blobservices/containers),
// Microsoft.KeyVault 2024-11-01, Microsoft.Authorization/roleAssignments 2022-04-01. Entra
// delivery: https://learn.microsoft.com/azure/event-grid/secure-webhook-delivery and
// https://learn.microsoft.com/azure/event-grid/security-authentication.

@description('Where the new resources go.')
param location string = resourceGroup().location

@description('The existing Key Vault whose secrets the application caches (same resource group, RBAC permission model).')
param keyVaultName string

@description('The Event Grid system topic of the vault. A vault has at most one: if it has one already, give its name.')
param systemTopicName string = '${keyVaultName}-events'

@description('The event subscription that pushes the vault\'s events to the webhook.')
param eventSubscriptionName string = 'keyvault-invalidator'

@description('The event types pushed; the library invalidates on SecretNewVersionCreated.')
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

@description('The webhook\'s HTTPS URL (a shared secret may ride in its query string, ?code=...).')
@secure()
param webhookUrl string

@description('Events per request at most (1-5000): a request is applied all or none and answered within Event Grid\'s 30 s.')
@minValue(1)
@maxValue(5000)
param maxEventsPerBatch int = 10

@description('Preferred request size in kilobytes (1-1024): keep it within the webhook\'s body limit; a Key Vault event is under 2 KB.')
@minValue(1)
@maxValue(1024)
param preferredBatchSizeInKilobytes int = 64

@description('The Microsoft Entra tenant of the webhook\'s app registration.')
param entraTenantId string = subscription().tenantId

@description('The webhook\'s app registration: its application (client) id or Application ID URI, the tokens\' audience.')
param entraApplicationIdOrUri string

@description('The storage account that receives what Event Grid could not deliver (globally unique, 3-24 lowercase letters and digits).')
param deadLetterStorageAccountName string = 'kvi${uniqueString(resourceGroup().id)}'

@description('Its blob container for dead-lettered events.')
param deadLetterContainerName string = 'keyvault-events-dead-letter'

@description('The principal (object) id of the application\'s managed identity.')
param principalId string

// Built-in role definition ids, the same in every tenant:
// https://learn.microsoft.com/azure/role-based-access-control/built-in-roles/security
// (Key Vault Secrets User) and
// https://learn.microsoft.com/azure/role-based-access-control/built-in-roles/storage
// (Storage Blob Data Contributor).
var keyVaultSecretsUserRoleId = '4633458b-17de-408a-b874-0445c86b69e6'
var storageBlobDataContributorRoleId = 'ba92f5b4-2d11-453d-a403-e96b0029c9fe'

resource keyVault 'Microsoft.KeyVault/vaults@2024-11-01' existing = {
  name: keyVaultName
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

// The system topic's identity writes dead letters.
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
    destination: {
      endpointType: 'WebHook'
      properties: {
        endpointUrl: webhookUrl
        maxEventsPerBatch: maxEventsPerBatch
        preferredBatchSizeInKilobytes: preferredBatchSizeInKilobytes
        azureActiveDirectoryTenantId: entraTenantId
        azureActiveDirectoryApplicationIdOrUri: entraApplicationIdOrUri
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
    deadLetterWriter
  ]
}

// The application's identity.
resource appSecretsUser 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(keyVault.id, principalId, keyVaultSecretsUserRoleId)
  scope: keyVault
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', keyVaultSecretsUserRoleId)
    principalId: principalId
    principalType: 'ServicePrincipal'
  }
}

@description('The tenant whose signing keys and issuer the webhook checks tokens against.')
output entraTenantId string = entraTenantId

@description('The audience the webhook expects in the tokens.')
output entraAudience string = entraApplicationIdOrUri

@description('The event subscription (the aeg-subscription-name header of its requests).')
output eventSubscriptionName string = eventSubscriptionName

@description('The vault URI for the secret provider (KeyVaultProvider::new).')
output keyVaultUri string = keyVault.properties.vaultUri
