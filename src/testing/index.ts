export {
  createTestDatabase,
  readTestCluster,
  type StartTestClusterOptions,
  startTestCluster,
  type TestCluster,
  type TestDatabase,
} from './test-database.ts';
