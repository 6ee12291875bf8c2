import type { ColumnType, Generated } from 'kysely';

type Timestamp = ColumnType<Date, Date | string | undefined, Date | string>;
type TenantId = Generated<string>;

/** Where a broadcast is: created, its batches being sent, or every recipient settled. */
export type BroadcastStatus = 'queued' | 'sending' | 'completed' | 'failed';

/** Where an export is: waiting for its job, its file ready, or failed for good. */
export type ExportStatus = 'queued' | 'ready' | 'failed';

/** Where one recipient of a broadcast is. */
export type RecipientStatus = 'pending' | 'sent' | 'failed';

/** A value for a template placeholder: fixed text, or a field of each recipient contact. */
export type BroadcastVariable = string | { readonly contact: 'name' | 'phone' | 'email' };

/** Tables of the reference app as Kysely sees them (migrations in `app/migrations`). */
export interface AppDatabase {
  contacts: {
    tenant_id: TenantId;
    id: Generated<string>;
    name: string;
    phone: string | null;
    email: string | null;
    email_normalized: ColumnType<string | null, never, never>;
    attributes: ColumnType<Record<string, unknown>, string | undefined, string>;
    version: Generated<number>;
    created_at: Generated<Date>;
    updated_at: Timestamp;
  };
  tags: { tenant_id: TenantId; id: Generated<string>; name: string };
  contact_tags: { tenant_id: TenantId; contact_id: string; tag_id: string };
  conversations: {
    tenant_id: TenantId;
    id: Generated<string>;
    contact_id: string;
    subject: string | null;
    status: Generated<'open' | 'closed'>;
    assignee_id: string | null;
    version: Generated<number>;
    created_at: Generated<Date>;
    updated_at: Timestamp;
    last_message_at: Date | null;
  };
  messages: {
    tenant_id: TenantId;
    id: Generated<string>;
    conversation_id: string;
    direction: 'inbound' | 'outbound';
    body: string;
    sender_id: string | null;
    provider_message_id: string | null;
    status: Generated<'received' | 'queued' | 'sent' | 'delivered' | 'read' | 'failed'>;
    created_at: Timestamp;
  };
  message_templates: {
    tenant_id: TenantId;
    id: Generated<string>;
    name: string;
    language: Generated<string>;
    category: Generated<'marketing' | 'utility' | 'authentication'>;
    body: string;
    version: Generated<number>;
    created_at: Generated<Date>;
    updated_at: Timestamp;
  };
  memberships: {
    tenant_id: TenantId;
    user_id: string;
    role: 'owner' | 'admin' | 'member';
    created_at: Generated<Date>;
  };
  invitations: {
    tenant_id: TenantId;
    id: Generated<string>;
    email: string;
    role: 'admin' | 'member';
    token_hash: Buffer;
    invited_by: string;
    expires_at: Date;
    accepted_at: Date | null;
    created_at: Generated<Date>;
  };
  workspace_settings: {
    tenant_id: TenantId;
    inbound_webhook_secret: string;
    updated_at: Timestamp;
  };
  idempotency_keys: {
    tenant_id: TenantId;
    key: string;
    request_hash: Buffer;
    status_code: number | null;
    response: ColumnType<unknown, string | null, string | null>;
    created_at: Generated<Date>;
  };
  broadcasts: {
    tenant_id: TenantId;
    id: Generated<string>;
    name: string;
    template_id: string;
    body: string;
    variables: ColumnType<BroadcastVariable[], string, string>;
    tag_ids: string[];
    status: Generated<BroadcastStatus>;
    created_by: string | null;
    recipient_count: Generated<number>;
    sent_count: Generated<number>;
    failed_count: Generated<number>;
    created_at: Generated<Date>;
    started_at: Date | null;
    completed_at: Date | null;
  };
  broadcast_recipients: {
    tenant_id: TenantId;
    broadcast_id: string;
    contact_id: string;
    status: Generated<RecipientStatus>;
    attempts: Generated<number>;
    provider_message_id: string | null;
    last_error: string | null;
    sent_at: Date | null;
  };
  channel_deliveries: {
    tenant_id: TenantId;
    id: Generated<string>;
    idempotency_key: string;
    contact_id: string;
    channel: string;
    to_address: string;
    body: string;
    created_at: Generated<Date>;
  };
  conversation_digests: {
    tenant_id: TenantId;
    /** A `date`: select it as text (`day::text`), a JavaScript Date would shift it by the time zone. */
    day: string;
    conversations_opened: number;
    conversations_active: number;
    messages_in: number;
    messages_out: number;
    computed_at: Generated<Date>;
  };
  message_attachments: {
    tenant_id: TenantId;
    message_id: string;
    message_created_at: ColumnType<Date, Date | string, never>;
    file_id: string;
    position: number;
    created_at: Generated<Date>;
  };
  exports: {
    tenant_id: TenantId;
    id: Generated<string>;
    kind: 'contacts';
    status: Generated<ExportStatus>;
    file_id: string | null;
    row_count: number | null;
    error: string | null;
    created_by: string | null;
    created_at: Generated<Date>;
    finished_at: Date | null;
  };
  'auth.users': {
    id: Generated<string>;
    email: string;
    name: string;
    password_hash: string;
    created_at: Generated<Date>;
  };
  'auth.refresh_tokens': {
    id: Generated<string>;
    token_hash: Buffer;
    family_id: string;
    user_id: string;
    workspace_id: string;
    expires_at: Date;
    used_at: Date | null;
    revoked_at: Date | null;
    created_at: Generated<Date>;
  };
}
